//! The address book: who we know, by UUID, alias and pinned public key.
//!
//! As in the Enclave address book this maps machine names (here UUIDs) to names
//! people use. Each contact also pins the peer's ed25519 key: a peer link is
//! only accepted when the peer proves that exact key, so a compromised registry
//! cannot swap in another key for a contact we already have.
//!
//! Adding a contact is also consent to share presence with it (the server tells each of
//! two contacts when the other is online only if both name each other); a contact added
//! with `presence = false` (`chatr contacts add --no-presence`) is never sent to the
//! server as such ([`Contacts::presence_list`]).

use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::identity::{parse_public_key, public_key_base64};

/// What can go wrong with the address book.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContactsError {
    /// Reading or writing the file failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid address book.
    #[error("{path} is not a valid address book: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Another contact already uses this alias.
    #[error("the alias {0:?} is already used by another contact; pick another or remove it first")]
    AliasTaken(String),
    /// The UUID is already in the book.
    #[error("{uuid} is already a contact (as {alias:?}); remove it first to change it")]
    AlreadyKnown {
        /// The UUID.
        uuid: Uuid,
        /// Its current alias.
        alias: String,
    },
    /// No contact has this alias or UUID.
    #[error("no contact named {0:?}; see `chatr contacts list`")]
    NotFound(String),
    /// The alias is not usable (empty, or looks like a UUID).
    #[error("invalid alias {0:?}: use a non-empty name that is not a UUID")]
    BadAlias(String),
}

/// One entry of the address book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The peer's client id.
    pub uuid: Uuid,
    /// The name we call them by.
    pub alias: String,
    /// Their pinned public key.
    pub key: VerifyingKey,
    /// Whether we share presence with them (and see theirs, if they share it with us).
    pub presence: bool,
}

/// The address book.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contacts {
    entries: Vec<Contact>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RawContacts {
    #[serde(default, rename = "contact")]
    contacts: Vec<RawContact>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContact {
    uuid: String,
    alias: String,
    key: String,
    /// Absent means true (books written before presence existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    presence: Option<bool>,
}

impl Contacts {
    /// Loads the book at `path`; a missing file is an empty book.
    pub fn load(path: &Path) -> Result<Self, ContactsError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ContactsError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let parse_err = |reason: String| ContactsError::Parse {
            path: path.to_path_buf(),
            reason,
        };
        let raw: RawContacts = toml::from_str(&text).map_err(|e| parse_err(e.to_string()))?;
        let mut book = Self::default();
        for r in raw.contacts {
            let uuid = Uuid::parse_str(&r.uuid)
                .map_err(|_| parse_err(format!("bad UUID {:?}", r.uuid)))?;
            let key = parse_public_key(&r.key)
                .ok_or_else(|| parse_err(format!("bad public key for {}", r.alias)))?;
            book.add(Contact {
                uuid,
                alias: r.alias,
                key,
                presence: r.presence.unwrap_or(true),
            })
            .map_err(|e| parse_err(e.to_string()))?;
        }
        Ok(book)
    }

    /// Writes the book to `path`.
    pub fn save(&self, path: &Path) -> Result<(), ContactsError> {
        let raw = RawContacts {
            contacts: self
                .entries
                .iter()
                .map(|c| RawContact {
                    uuid: c.uuid.to_string(),
                    alias: c.alias.clone(),
                    key: public_key_base64(&c.key),
                    presence: (!c.presence).then_some(false),
                })
                .collect(),
        };
        let text = toml::to_string(&raw).map_err(|e| ContactsError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let io = |source| ContactsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("toml.tmp");
        fs::write(&tmp, text).map_err(io)?;
        fs::rename(&tmp, path).map_err(io)
    }

    /// Adds a contact; aliases and UUIDs are unique.
    pub fn add(&mut self, contact: Contact) -> Result<(), ContactsError> {
        let alias = contact.alias.trim();
        if alias.is_empty() || Uuid::parse_str(alias).is_ok() {
            return Err(ContactsError::BadAlias(contact.alias));
        }
        if let Some(existing) = self.by_uuid(&contact.uuid) {
            return Err(ContactsError::AlreadyKnown {
                uuid: contact.uuid,
                alias: existing.alias.clone(),
            });
        }
        if self.entries.iter().any(|c| c.alias == alias) {
            return Err(ContactsError::AliasTaken(alias.to_string()));
        }
        self.entries.push(Contact {
            alias: alias.to_string(),
            ..contact
        });
        Ok(())
    }

    /// Removes the contact named by alias or UUID, returning it.
    pub fn remove(&mut self, name: &str) -> Result<Contact, ContactsError> {
        let idx = self
            .position(name)
            .ok_or_else(|| ContactsError::NotFound(name.to_string()))?;
        Ok(self.entries.remove(idx))
    }

    /// Finds a contact by alias or UUID (an alias match wins).
    pub fn find(&self, name: &str) -> Option<&Contact> {
        self.position(name).and_then(|i| self.entries.get(i))
    }

    /// The UUIDs we consent to share presence with: every contact not added with
    /// `presence = false`.
    pub fn presence_list(&self) -> std::collections::BTreeSet<Uuid> {
        self.entries
            .iter()
            .filter(|c| c.presence)
            .map(|c| c.uuid)
            .collect()
    }

    /// Sets whether we share presence with the contact named by alias or UUID.
    pub fn set_presence(&mut self, name: &str, presence: bool) -> Result<(), ContactsError> {
        let idx = self
            .position(name)
            .ok_or_else(|| ContactsError::NotFound(name.to_string()))?;
        if let Some(c) = self.entries.get_mut(idx) {
            c.presence = presence;
        }
        Ok(())
    }

    /// Finds a contact by UUID.
    pub fn by_uuid(&self, uuid: &Uuid) -> Option<&Contact> {
        self.entries.iter().find(|c| c.uuid == *uuid)
    }

    /// All contacts, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = &Contact> {
        self.entries.iter()
    }

    /// Number of contacts.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, name: &str) -> Option<usize> {
        let name = name.trim();
        if let Some(i) = self.entries.iter().position(|c| c.alias == name) {
            return Some(i);
        }
        let uuid = Uuid::parse_str(name).ok()?;
        self.entries.iter().position(|c| c.uuid == uuid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::generate_key;

    fn contact(alias: &str) -> Contact {
        Contact {
            uuid: Uuid::new_v4(),
            alias: alias.into(),
            key: generate_key().verifying_key(),
            presence: true,
        }
    }

    #[test]
    fn add_find_remove() {
        let mut book = Contacts::default();
        let alice = contact("alice");
        let bob = contact("bob");
        book.add(alice.clone()).unwrap();
        book.add(bob.clone()).unwrap();
        assert_eq!(book.find("alice"), Some(&alice));
        assert_eq!(book.find(&bob.uuid.to_string()), Some(&bob));
        assert_eq!(book.find("carol"), None);
        assert_eq!(book.remove("alice").unwrap(), alice);
        assert!(matches!(
            book.remove("alice"),
            Err(ContactsError::NotFound(_))
        ));
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn duplicates_and_bad_aliases_are_refused() {
        let mut book = Contacts::default();
        let alice = contact("alice");
        book.add(alice.clone()).unwrap();
        assert!(matches!(
            book.add(contact("alice")),
            Err(ContactsError::AliasTaken(_))
        ));
        assert!(matches!(
            book.add(Contact {
                alias: "other".into(),
                ..alice.clone()
            }),
            Err(ContactsError::AlreadyKnown { .. })
        ));
        assert!(matches!(
            book.add(contact("  ")),
            Err(ContactsError::BadAlias(_))
        ));
        let uuid_alias = Uuid::new_v4().to_string();
        assert!(matches!(
            book.add(contact(&uuid_alias)),
            Err(ContactsError::BadAlias(_))
        ));
    }

    #[test]
    fn save_load_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contacts.toml");
        assert!(Contacts::load(&path).unwrap().is_empty());
        let mut book = Contacts::default();
        book.add(contact("alice")).unwrap();
        book.add(Contact {
            presence: false,
            ..contact("bob")
        })
        .unwrap();
        book.save(&path).unwrap();
        assert_eq!(Contacts::load(&path).unwrap(), book);
        let bob = book.find("bob").unwrap().uuid;
        assert!(!book.presence_list().contains(&bob));
        assert_eq!(book.presence_list().len(), 1);
        // Only the withheld consent is written; an old book without the key means true.
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("presence").count(), 1, "{text}");
        book.set_presence("bob", true).unwrap();
        assert_eq!(book.presence_list().len(), 2);
    }

    #[test]
    fn corrupt_file_is_a_parse_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contacts.toml");
        fs::write(
            &path,
            "[[contact]]\nuuid = \"nope\"\nalias = \"a\"\nkey = \"AAAA\"\n",
        )
        .unwrap();
        assert!(matches!(
            Contacts::load(&path),
            Err(ContactsError::Parse { .. })
        ));
    }
}
