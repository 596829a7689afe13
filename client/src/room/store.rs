//! A client's rooms on disk: `<home>/rooms/<room id>/`.
//!
//! - `records`: one membership record per line (hex), **appended** by whoever learns a
//!   new one (`chatr room invite` while a `chatr room join` runs in another terminal
//!   appends; the running host notices the file grew and reads it again). Appends of
//!   one short line are atomic, so two writers never interleave.
//! - `state.json`: what this client delivered, per (sender, epoch), so that a restart
//!   does not show messages twice. Only the one running host writes it (one login per
//!   identity), replaced atomically (write, then rename).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::id::RoomId;
use super::membership::{Membership, MembershipError};
use super::record::Record;

/// Directory of the rooms inside a home.
pub const ROOMS_DIR: &str = "rooms";

/// Why the room store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is damaged.
    #[error("{path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The records do not make a room.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// No room by that name or id.
    #[error("no room named {0:?}; see `chatr room list`")]
    NotFound(String),
    /// Several rooms have that name.
    #[error("several rooms are named {name:?}; say which by id: {ids}")]
    Ambiguous {
        /// The name.
        name: String,
        /// Their short ids.
        ids: String,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    delivered: Vec<(Uuid, u64, u64)>,
}

/// The rooms of one home.
#[derive(Debug, Clone)]
pub struct RoomStore {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl RoomStore {
    /// The store under `home_dir`.
    pub fn new(home_dir: &Path) -> Self {
        Self {
            dir: home_dir.join(ROOMS_DIR),
        }
    }

    fn room_dir(&self, room: &RoomId) -> PathBuf {
        self.dir.join(room.to_hex())
    }

    fn records_path(&self, room: &RoomId) -> PathBuf {
        self.room_dir(room).join("records")
    }

    /// Every room we have records of.
    pub fn list(&self) -> Result<Vec<RoomId>, StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut rooms: Vec<RoomId> = entries
            .filter_map(Result::ok)
            .filter_map(|e| RoomId::from_hex(&e.file_name().to_string_lossy()))
            .collect();
        rooms.sort();
        Ok(rooms)
    }

    /// Loads a room's membership.
    pub fn load(&self, room: &RoomId) -> Result<Membership, StoreError> {
        let path = self.records_path(room);
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let mut records = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let damaged = |reason: String| StoreError::Damaged {
                path: path.clone(),
                reason: format!("line {}: {reason}", n + 1),
            };
            let bytes = hex::decode(line.trim()).map_err(|e| damaged(e.to_string()))?;
            records.push(Record::decode(&bytes).map_err(|e| damaged(e.to_string()))?);
        }
        Ok(Membership::from_records(*room, records)?)
    }

    /// The size of a room's records file (the host reloads it when it grows).
    pub fn records_len(&self, room: &RoomId) -> u64 {
        fs::metadata(self.records_path(room)).map_or(0, |m| m.len())
    }

    /// Appends records (creating the room's directory for a new room).
    pub fn append(&self, room: &RoomId, records: &[Record]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let dir = self.room_dir(room);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = self.records_path(room);
        let mut text = String::new();
        for r in records {
            text.push_str(&hex::encode(r.encode()));
            text.push('\n');
        }
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        file.write_all(text.as_bytes()).map_err(io(&path))
    }

    /// What an earlier run delivered.
    pub fn delivered(&self, room: &RoomId) -> BTreeMap<(Uuid, u64), u64> {
        let path = self.room_dir(room).join("state.json");
        let state: State = fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        state
            .delivered
            .into_iter()
            .map(|(u, e, s)| ((u, e), s))
            .collect()
    }

    /// Saves what this run delivered.
    pub fn save_delivered(
        &self,
        room: &RoomId,
        delivered: &BTreeMap<(Uuid, u64), u64>,
    ) -> Result<(), StoreError> {
        let dir = self.room_dir(room);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let state = State {
            delivered: delivered.iter().map(|((u, e), s)| (*u, *e, *s)).collect(),
        };
        let path = dir.join("state.json");
        let tmp = dir.join("state.json.tmp");
        let text = serde_json::to_string(&state).map_err(|e| StoreError::Damaged {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        fs::write(&tmp, text).map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// The room named `name` (its name, or its id or a prefix of the id of at least 4
    /// hex characters).
    pub fn find(&self, name: &str) -> Result<Membership, StoreError> {
        let name = name.trim();
        let mut by_name = Vec::new();
        let mut by_id = Vec::new();
        for id in self.list()? {
            let Ok(m) = self.load(&id) else { continue };
            if m.name() == name {
                by_name.push(m);
            } else if name.len() >= 4 && id.to_hex().starts_with(&name.to_ascii_lowercase()) {
                by_id.push(m);
            }
        }
        let found = if by_name.is_empty() { by_id } else { by_name };
        match found.len() {
            0 => Err(StoreError::NotFound(name.to_owned())),
            1 => Ok(found
                .into_iter()
                .next()
                .ok_or_else(|| StoreError::NotFound(name.to_owned()))?),
            _ => Err(StoreError::Ambiguous {
                name: name.to_owned(),
                ids: found
                    .iter()
                    .map(|m| m.room().short())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::room::record::RecordBody;

    #[test]
    fn rooms_are_stored_found_and_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let store = RoomStore::new(dir.path());
        assert!(store.list().unwrap().is_empty());
        let key = SigningKey::from_bytes(&[1; 32]);
        let me = Uuid::from_bytes([1; 16]);
        let genesis = Record::genesis("friends", [3; 16], me, &key);
        let room = genesis.room;
        store.append(&room, &[genesis]).unwrap();
        let found = store.find("friends").unwrap();
        assert_eq!(found.room(), room);
        assert_eq!(store.find(&room.short()).unwrap().room(), room);
        assert!(matches!(store.find("nope"), Err(StoreError::NotFound(_))));
        let bob = SigningKey::from_bytes(&[2; 32]);
        let invite = Record::sign(
            room,
            RecordBody::Invite {
                id: [1; 8],
                invitee: Uuid::from_bytes([2; 16]),
                key: bob.verifying_key().to_bytes(),
                alias: "bob".into(),
                time_ms: 1,
            },
            me,
            &key,
        );
        let before = store.records_len(&room);
        store.append(&room, &[invite]).unwrap();
        assert!(store.records_len(&room) > before);
        assert!(
            store
                .load(&room)
                .unwrap()
                .is_current(&Uuid::from_bytes([2; 16]))
        );
        let mut delivered = BTreeMap::new();
        delivered.insert((me, 7), 3);
        store.save_delivered(&room, &delivered).unwrap();
        assert_eq!(store.delivered(&room), delivered);
    }
}
