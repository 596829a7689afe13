//! The home directory: where a client keeps its identity, contacts and config.
//!
//! `--home DIR` picks it; by default it is the XDG config directory
//! (`$XDG_CONFIG_HOME/chatr`, else `~/.config/chatr`). Several homes on one
//! machine are several independent clients (tests and the NAT lab use this).

use std::fs;
use std::path::{Path, PathBuf};

pub use crate::config::CONFIG_FILE;
use crate::config::{Config, ConfigError};
use crate::contacts::{Contacts, ContactsError};
use crate::identity::{Identity, IdentityError};

/// File name of the address book inside the home directory.
pub const CONTACTS_FILE: &str = "contacts.toml";
/// File name of a pinned server certificate copied into the home directory.
pub const SERVER_CERT_FILE: &str = "server-cert.pem";

/// A client home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// The home at `dir` (not created yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The default home: `$XDG_CONFIG_HOME/chatr`, else `$HOME/.config/chatr`,
    /// else `./.chatr` when neither variable is set.
    pub fn default_dir() -> PathBuf {
        Self::default_dir_from(
            std::env::var_os("XDG_CONFIG_HOME"),
            std::env::var_os("HOME"),
        )
    }

    /// [`Home::default_dir`] from explicit variable values (testable).
    pub fn default_dir_from(
        xdg_config_home: Option<std::ffi::OsString>,
        home: Option<std::ffi::OsString>,
    ) -> PathBuf {
        // XDG says a relative XDG_CONFIG_HOME is invalid and must be ignored.
        if let Some(xdg) = xdg_config_home.map(PathBuf::from)
            && xdg.is_absolute()
        {
            return xdg.join("chatr");
        }
        match home {
            Some(h) if !h.is_empty() => PathBuf::from(h).join(".config").join("chatr"),
            _ => PathBuf::from(".chatr"),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory (mode 0700) if missing.
    pub fn create(&self) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    /// Path of the config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// Path of the address book.
    pub fn contacts_path(&self) -> PathBuf {
        self.dir.join(CONTACTS_FILE)
    }

    /// Path where a pinned server certificate is kept.
    pub fn server_cert_path(&self) -> PathBuf {
        self.dir.join(SERVER_CERT_FILE)
    }

    /// Whether `init` has run here.
    pub fn is_initialized(&self) -> bool {
        Identity::exists(&self.dir) && self.config_path().exists()
    }

    /// Loads the identity.
    pub fn identity(&self) -> Result<Identity, IdentityError> {
        Identity::load(&self.dir)
    }

    /// Loads the config.
    pub fn config(&self) -> Result<Config, ConfigError> {
        Config::load(&self.config_path())
    }

    /// Loads the address book (empty when there is none yet).
    pub fn contacts(&self) -> Result<Contacts, ContactsError> {
        Contacts::load(&self.contacts_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_prefers_absolute_xdg() {
        assert_eq!(
            Home::default_dir_from(Some("/x/cfg".into()), Some("/home/u".into())),
            PathBuf::from("/x/cfg/chatr")
        );
        assert_eq!(
            Home::default_dir_from(Some("relative".into()), Some("/home/u".into())),
            PathBuf::from("/home/u/.config/chatr")
        );
        assert_eq!(
            Home::default_dir_from(None, Some("/home/u".into())),
            PathBuf::from("/home/u/.config/chatr")
        );
        assert_eq!(Home::default_dir_from(None, None), PathBuf::from(".chatr"));
    }

    #[test]
    fn create_makes_private_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(tmp.path().join("a/b"));
        home.create().unwrap();
        assert!(home.dir().is_dir());
        assert!(!home.is_initialized());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(home.dir()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }
}
