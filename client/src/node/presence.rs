//! What the client knows about its contacts' presence (version 3): a `watch` that the
//! session events keep up to date, for `chatr contacts list`, `chatr listen` and the TUI.

use std::collections::BTreeMap;

use chatr_proto::PresenceStatus;
use uuid::Uuid;

/// One online contact, as the server last told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactPresence {
    /// Its status (never [`PresenceStatus::Offline`] here: offline contacts are absent).
    pub status: PresenceStatus,
    /// Its status message.
    pub message: String,
}

/// Our view of the presence of our (mutual) contacts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresenceView {
    /// Whether the server offers presence on the current session.
    pub available: bool,
    /// Whether the server has acknowledged our latest presence change: from then on, a
    /// contact absent from [`PresenceView::online`] is offline (or does not name us).
    pub synced: bool,
    /// The contacts online now.
    pub online: BTreeMap<Uuid, ContactPresence>,
}

impl PresenceView {
    /// The status of `contact`: `None` while not synced (unknown), else its status
    /// (offline when absent).
    pub fn status_of(&self, contact: &Uuid) -> Option<PresenceStatus> {
        if let Some(p) = self.online.get(contact) {
            return Some(p.status);
        }
        self.synced.then_some(PresenceStatus::Offline)
    }

    /// Applies one update from the server.
    pub(crate) fn apply(&mut self, peer: Uuid, status: PresenceStatus, message: String) {
        if status.is_online() {
            self.online
                .insert(peer, ContactPresence { status, message });
        } else {
            self.online.remove(&peer);
        }
    }

    /// What changed from `before` to `self`, contact by contact: `(contact, old, new)`
    /// with `None` for offline.
    pub fn changes_since<'a>(
        &'a self,
        before: &'a PresenceView,
    ) -> Vec<(
        Uuid,
        Option<&'a ContactPresence>,
        Option<&'a ContactPresence>,
    )> {
        let mut out = Vec::new();
        for (uuid, now) in &self.online {
            let old = before.online.get(uuid);
            if old != Some(now) {
                out.push((*uuid, old, Some(now)));
            }
        }
        for (uuid, old) in &before.online {
            if !self.online.contains_key(uuid) {
                out.push((*uuid, Some(old), None));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_contacts_are_absent_and_changes_are_listed() {
        let (a, b) = (Uuid::from_bytes([1; 16]), Uuid::from_bytes([2; 16]));
        let mut view = PresenceView::default();
        assert_eq!(view.status_of(&a), None);
        view.apply(a, PresenceStatus::Available, String::new());
        view.synced = true;
        assert_eq!(view.status_of(&a), Some(PresenceStatus::Available));
        assert_eq!(view.status_of(&b), Some(PresenceStatus::Offline));
        let before = view.clone();
        view.apply(a, PresenceStatus::Offline, String::new());
        view.apply(b, PresenceStatus::Busy, "call".into());
        let changes = view.changes_since(&before);
        assert_eq!(changes.len(), 2);
        assert!(
            changes
                .iter()
                .any(|(u, old, new)| *u == a && old.is_some() && new.is_none())
        );
        assert!(
            changes
                .iter()
                .any(|(u, old, new)| *u == b && old.is_none() && new.is_some())
        );
    }
}
