//! Presence: which of a client's contacts are online, for mutual contacts only.
//!
//! Each version-3 session that sends a presence packet becomes a [`Presence`] member
//! with its consent list (the contacts it named in `PacketPresenceContacts`, at most
//! [`PresenceConfig::max_contacts`]) and its status. The one rule that keeps presence
//! private: **A is told about B only while A's list names B and B's list names A** (and
//! B's session is a member). So listing a stranger reveals nothing, not even whether the
//! UUID exists; withdrawing consent (removing a contact, or never adding it) tells the
//! other side "offline".
//!
//! Events, each checked against that rule:
//! - a member names a contact that names it back and is online: both learn of each other;
//! - a member changes its status: its online mutual contacts learn the new one;
//! - a member removes a contact: if they were mutual, both see the other go offline;
//! - a session ends (logout, ping time-out, kick, takeover): its mutual contacts see it
//!   go offline (`Presence::leave`, keyed by the session id so a replaced session never
//!   removes its successor).
//!
//! Updates for a client go into its `PresenceInbox`, which keeps only the **latest**
//! state per contact (bounded by the client's own list) and wakes its driver. A slow
//! client therefore gets fewer, never stale or unbounded, updates, and nobody else
//! waits for it. One mutex guards the member table: every operation is synchronous,
//! O(batch or list size), and never held across an `.await` (lock order: table, then an
//! inbox).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chatr_proto::{ContactsOp, PresenceStatus};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::metrics::Metrics;

/// Presence settings (`docs/PROTOCOL.md` §13 "Presence").
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// Offer presence to version-3 sessions at all.
    pub enabled: bool,
    /// The most contacts one session's list holds; names beyond it are ignored.
    pub max_contacts: usize,
    /// Presence packets (contact batches and status changes) a session may send per
    /// second, sustained; faster ends the session ("Too many presence updates").
    pub updates_per_second: u32,
    /// Burst allowance for presence packets (a login sends its list in a few batches).
    pub update_burst: u32,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_contacts: 512,
            updates_per_second: 5,
            update_burst: 40,
        }
    }
}

/// One contact's presence as its client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PresenceState {
    pub(crate) status: PresenceStatus,
    pub(crate) message: String,
}

impl PresenceState {
    fn offline() -> Self {
        Self {
            status: PresenceStatus::Offline,
            message: String::new(),
        }
    }
}

/// What is waiting to be sent to one client: the latest state of each contact that
/// changed, and the acknowledgement of its own latest presence packet.
#[derive(Debug, Default)]
pub(crate) struct PendingPresence {
    /// By contact; sorted so that a drain is deterministic.
    pub(crate) updates: BTreeMap<Uuid, PresenceState>,
    /// The client's own state, to echo as the acknowledgement (sent after `updates`).
    pub(crate) ack: Option<PresenceState>,
}

impl PendingPresence {
    /// Whether nothing is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.ack.is_none()
    }
}

/// One session's presence inbox: written by the registry, drained by the session's
/// driver when [`PresenceInbox::notified`] fires.
#[derive(Debug, Default)]
pub(crate) struct PresenceInbox {
    pending: Mutex<PendingPresence>,
    notify: Notify,
}

impl PresenceInbox {
    fn lock(&self) -> MutexGuard<'_, PendingPresence> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, about: Uuid, state: PresenceState) {
        self.lock().updates.insert(about, state);
        self.notify.notify_one();
    }

    fn ack(&self, state: PresenceState) {
        self.lock().ack = Some(state);
        self.notify.notify_one();
    }

    /// Takes everything waiting.
    pub(crate) fn take(&self) -> PendingPresence {
        std::mem::take(&mut *self.lock())
    }

    /// Resolves when something was pushed since the last wake-up (a permit is kept if
    /// nobody waits, so no push is missed).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }
}

/// Which session a presence call is about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Who<'a> {
    pub(crate) uuid: Uuid,
    /// The connection id (unique per connection; see `SessionShared::id`).
    pub(crate) id: u64,
    pub(crate) inbox: &'a Arc<PresenceInbox>,
}

#[derive(Debug)]
struct Member {
    id: u64,
    contacts: HashSet<Uuid>,
    state: PresenceState,
    inbox: Arc<PresenceInbox>,
}

impl Member {
    fn names(&self, other: &Uuid) -> bool {
        self.contacts.contains(other)
    }
}

/// The presence registry of the server. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct Presence {
    inner: Arc<Mutex<HashMap<Uuid, Member>>>,
    config: PresenceConfig,
    metrics: Arc<Metrics>,
}

impl Presence {
    /// An empty registry.
    pub fn new(config: PresenceConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::default(),
            config,
            metrics,
        }
    }

    /// The settings.
    pub fn config(&self) -> &PresenceConfig {
        &self.config
    }

    /// Sessions sharing presence now.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// Whether no session shares presence.
    pub fn is_empty(&self) -> bool {
        self.table().is_empty()
    }

    fn table(&self) -> MutexGuard<'_, HashMap<Uuid, Member>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The member entry of `who`, created on its first presence packet. A leftover
    /// entry of an older session with the same UUID (one that was replaced and has
    /// not ended yet) is dropped first, telling its contacts it went offline.
    fn member<'t>(
        &self,
        table: &'t mut HashMap<Uuid, Member>,
        who: Who<'_>,
    ) -> Option<&'t mut Member> {
        if table.get(&who.uuid).is_some_and(|m| m.id != who.id) {
            self.remove_locked(table, who.uuid);
        }
        let member = table.entry(who.uuid).or_insert_with(|| {
            self.metrics.presence_sessions_add(1);
            Member {
                id: who.id,
                contacts: HashSet::new(),
                state: PresenceState {
                    status: PresenceStatus::Available,
                    message: String::new(),
                },
                inbox: Arc::clone(who.inbox),
            }
        });
        Some(member)
    }

    /// Adds `contacts` to (or removes them from) `who`'s consent list; both sides of
    /// every pair that becomes (or stops being) mutual are told. Returns how many names
    /// were ignored because the list is full.
    pub(crate) fn contacts(&self, who: Who<'_>, op: ContactsOp, contacts: &[Uuid]) -> usize {
        let mut table = self.table();
        let mut ignored = 0;
        let mut changed = Vec::new();
        {
            let Some(me) = self.member(&mut table, who) else {
                return 0;
            };
            for &contact in contacts {
                if contact == who.uuid {
                    continue;
                }
                let did = match op {
                    ContactsOp::Add if me.contacts.len() >= self.config.max_contacts => {
                        ignored += usize::from(!me.contacts.contains(&contact));
                        false
                    }
                    ContactsOp::Add => me.contacts.insert(contact),
                    ContactsOp::Remove => me.contacts.remove(&contact),
                };
                if did {
                    changed.push(contact);
                }
            }
        }
        let mut sent = 0;
        for contact in changed {
            // Split borrows: look at the contact, then at ourselves.
            let Some(other) = table.get(&contact) else {
                continue;
            };
            if !other.names(&who.uuid) {
                continue;
            }
            let (their_state, their_inbox) = (other.state.clone(), Arc::clone(&other.inbox));
            let Some(me) = table.get(&who.uuid) else {
                continue;
            };
            let (mine, theirs) = match op {
                ContactsOp::Add => (their_state, me.state.clone()),
                ContactsOp::Remove => (PresenceState::offline(), PresenceState::offline()),
            };
            me.inbox.push(contact, mine);
            their_inbox.push(who.uuid, theirs);
            sent += 2;
        }
        if let Some(me) = table.get(&who.uuid) {
            me.inbox.ack(me.state.clone());
            sent += 1;
        }
        self.metrics.presence_updates_sent(sent);
        ignored
    }

    /// Sets `who`'s status; its online mutual contacts are told.
    pub(crate) fn status(&self, who: Who<'_>, status: PresenceStatus, message: &str) {
        let mut table = self.table();
        let state = PresenceState {
            status,
            message: if status.is_online() {
                message.to_owned()
            } else {
                String::new()
            },
        };
        let contacts: Vec<Uuid> = {
            let Some(me) = self.member(&mut table, who) else {
                return;
            };
            me.state = state.clone();
            me.inbox.ack(state.clone());
            me.contacts.iter().copied().collect()
        };
        let mut sent = 1;
        for contact in contacts {
            if let Some(other) = table.get(&contact)
                && other.names(&who.uuid)
            {
                other.inbox.push(who.uuid, state.clone());
                sent += 1;
            }
        }
        self.metrics.presence_updates_sent(sent);
    }

    /// The session `id` of `uuid` ended (logout, time-out, kick) or was replaced by a
    /// takeover: its mutual contacts see it go offline. A newer session of the same
    /// UUID is left alone.
    pub(crate) fn leave(&self, uuid: Uuid, id: u64) {
        let mut table = self.table();
        if table.get(&uuid).is_some_and(|m| m.id == id) {
            self.remove_locked(&mut table, uuid);
        }
    }

    fn remove_locked(&self, table: &mut HashMap<Uuid, Member>, uuid: Uuid) {
        let Some(gone) = table.remove(&uuid) else {
            return;
        };
        self.metrics.presence_sessions_add(-1);
        let mut sent = 0;
        for contact in &gone.contacts {
            if let Some(other) = table.get(contact)
                && other.names(&uuid)
            {
                other.inbox.push(uuid, PresenceState::offline());
                sent += 1;
            }
        }
        self.metrics.presence_updates_sent(sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max: usize) -> Presence {
        Presence::new(
            PresenceConfig {
                max_contacts: max,
                ..PresenceConfig::default()
            },
            Arc::new(Metrics::default()),
        )
    }

    struct Session {
        uuid: Uuid,
        id: u64,
        inbox: Arc<PresenceInbox>,
    }

    impl Session {
        fn new(n: u8, id: u64) -> Self {
            Self {
                uuid: Uuid::from_bytes([n; 16]),
                id,
                inbox: Arc::default(),
            }
        }
        fn who(&self) -> Who<'_> {
            Who {
                uuid: self.uuid,
                id: self.id,
                inbox: &self.inbox,
            }
        }
        fn seen(&self) -> Vec<(Uuid, PresenceStatus)> {
            self.inbox
                .take()
                .updates
                .into_iter()
                .map(|(u, s)| (u, s.status))
                .collect()
        }
    }

    #[test]
    fn only_mutual_contacts_see_each_other() {
        let p = registry(10);
        let (a, b, c) = (Session::new(1, 1), Session::new(2, 2), Session::new(3, 3));
        // A names B and C; C names nobody; B names A only later.
        p.contacts(a.who(), ContactsOp::Add, &[b.uuid, c.uuid]);
        p.contacts(c.who(), ContactsOp::Add, &[]);
        assert!(a.seen().is_empty());
        assert!(c.seen().is_empty(), "C learns nothing of A, who named it");
        p.contacts(b.who(), ContactsOp::Add, &[a.uuid]);
        assert_eq!(a.seen(), vec![(b.uuid, PresenceStatus::Available)]);
        assert_eq!(b.seen(), vec![(a.uuid, PresenceStatus::Available)]);
        // Status changes reach mutual contacts only.
        p.status(a.who(), PresenceStatus::Busy, "call");
        assert_eq!(b.seen(), vec![(a.uuid, PresenceStatus::Busy)]);
        assert!(c.seen().is_empty());
        // Withdrawing consent looks like going offline, to both sides.
        p.contacts(b.who(), ContactsOp::Remove, &[a.uuid]);
        assert_eq!(a.seen(), vec![(b.uuid, PresenceStatus::Offline)]);
        assert_eq!(b.seen(), vec![(a.uuid, PresenceStatus::Offline)]);
        p.status(a.who(), PresenceStatus::Away, "");
        assert!(b.seen().is_empty());
    }

    #[test]
    fn leaving_is_keyed_by_session_and_a_newcomer_replaces_the_old_entry() {
        let p = registry(10);
        let (a, b) = (Session::new(1, 1), Session::new(2, 2));
        p.contacts(a.who(), ContactsOp::Add, &[b.uuid]);
        p.contacts(b.who(), ContactsOp::Add, &[a.uuid]);
        a.seen();
        b.seen();
        // B's session is taken over by session 9 before session 2 ended.
        let b2 = Session::new(2, 9);
        p.contacts(b2.who(), ContactsOp::Add, &[a.uuid]);
        assert_eq!(a.seen(), vec![(b.uuid, PresenceStatus::Available)]);
        // The old session ending later changes nothing.
        p.leave(b.uuid, 2);
        assert!(a.seen().is_empty());
        assert_eq!(p.len(), 2);
        p.leave(b.uuid, 9);
        assert_eq!(a.seen(), vec![(b.uuid, PresenceStatus::Offline)]);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn the_list_is_capped_and_updates_coalesce() {
        let p = registry(2);
        let a = Session::new(1, 1);
        let names: Vec<Uuid> = (10..15).map(|n| Uuid::from_bytes([n; 16])).collect();
        assert_eq!(p.contacts(a.who(), ContactsOp::Add, &names), 3);
        let b = Session::new(10, 2);
        p.contacts(b.who(), ContactsOp::Add, &[a.uuid]);
        for status in [PresenceStatus::Away, PresenceStatus::Busy] {
            p.status(b.who(), status, "x");
        }
        // Only the latest state of B is waiting, and the ack of A's own list is there.
        let pending = a.inbox.take();
        assert_eq!(pending.updates.len(), 1);
        assert_eq!(
            pending.updates.get(&b.uuid).map(|s| s.status),
            Some(PresenceStatus::Busy)
        );
        assert!(pending.ack.is_some());
        // A name past the cap was ignored: that contact is never revealed.
        let late = Session::new(14, 3);
        p.contacts(late.who(), ContactsOp::Add, &[a.uuid]);
        assert!(late.seen().is_empty());
    }
}
