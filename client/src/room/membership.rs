//! Who is a member of a room, computed from its records alone.
//!
//! The rules (`docs/ROOMS.md`):
//!
//! 1. The **genesis** record makes its signer (the creator) a member. It is only valid
//!    if the room id is the hash of the creator's UUID, key and the record's nonce, so
//!    nobody can write another genesis for an existing room.
//! 2. An **invite** is valid if its signer was a member (by rule 1 or 2, at any time:
//!    what a member did while it was one stays done) and the signature verifies with
//!    the signer's key. It makes the invitee a member with the key the inviter pinned.
//!    If two valid invites give one UUID different keys, the earliest (by time, then
//!    invite id) wins and the others are ignored.
//! 3. A **leave** ends one membership of its signer: the invitation it names (or the
//!    genesis). It must verify with the leaver's key. A later invite makes it a member
//!    again.
//!
//! A member is *current* if it has a valid invitation (or the genesis) no leave ended.
//! Records only ever get added (a grow-only set), so members who exchange records end
//! up agreeing, whatever order they saw them in. Nobody is a member without a chain of
//! signed invitations back to the creator: a client that was never invited cannot join.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ed25519_dalek::VerifyingKey;
use uuid::Uuid;

use super::id::RoomId;
use super::record::{InviteId, Record, RecordBody, room_id_for};

/// The most records one room keeps (invites and leaves together); more are refused.
pub const MAX_RECORDS: usize = 256;

/// One member as the records describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its UUID.
    pub uuid: Uuid,
    /// Its key (from the genesis or its earliest valid invitation).
    pub key: VerifyingKey,
    /// What its inviter calls it (the creator: empty).
    pub alias: String,
    /// Who invited it (the creator: itself).
    pub invited_by: Uuid,
    /// Whether it is a member now (not left).
    pub current: bool,
}

/// Why a set of records cannot make a room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// No valid genesis for this room id.
    #[error("the room's genesis record is missing or invalid")]
    NoGenesis,
    /// Too many records.
    #[error("a room keeps at most {MAX_RECORDS} membership records")]
    TooManyRecords,
    /// A record belongs to another room.
    #[error("a record of another room was mixed in")]
    WrongRoom,
}

/// A room's records and the members they make.
#[derive(Debug, Clone)]
pub struct Membership {
    room: RoomId,
    name: String,
    creator: Uuid,
    records: Vec<Record>,
    seen: HashSet<Record>,
    members: BTreeMap<Uuid, Member>,
}

impl Membership {
    /// The membership of the room that `genesis` created.
    pub fn new(genesis: Record) -> Result<Self, MembershipError> {
        let RecordBody::Genesis {
            name,
            nonce,
            creator_key,
        } = &genesis.body
        else {
            return Err(MembershipError::NoGenesis);
        };
        let key = VerifyingKey::from_bytes(creator_key).map_err(|_| MembershipError::NoGenesis)?;
        if room_id_for(&genesis.signer, creator_key, nonce) != genesis.room || !genesis.verify(&key)
        {
            return Err(MembershipError::NoGenesis);
        }
        let mut m = Self {
            room: genesis.room,
            name: name.clone(),
            creator: genesis.signer,
            records: vec![genesis.clone()],
            seen: HashSet::from([genesis]),
            members: BTreeMap::new(),
        };
        m.recompute();
        Ok(m)
    }

    /// The membership made by `records` (in any order; one must be the genesis).
    pub fn from_records(room: RoomId, records: Vec<Record>) -> Result<Self, MembershipError> {
        let genesis = records
            .iter()
            .find(|r| r.room == room && matches!(r.body, RecordBody::Genesis { .. }))
            .cloned()
            .ok_or(MembershipError::NoGenesis)?;
        let mut m = Self::new(genesis)?;
        m.merge(records)?;
        Ok(m)
    }

    /// Adds records; returns those that were new (to pass on to others). Records that do
    /// not verify are kept out of the computed members but still stored only if they
    /// could become valid later (an invite whose inviter is not known yet).
    pub fn merge(&mut self, records: Vec<Record>) -> Result<Vec<Record>, MembershipError> {
        let mut new = Vec::new();
        for record in records {
            if record.room != self.room {
                return Err(MembershipError::WrongRoom);
            }
            if self.seen.contains(&record) || matches!(record.body, RecordBody::Genesis { .. }) {
                continue;
            }
            if self.records.len() >= MAX_RECORDS {
                return Err(MembershipError::TooManyRecords);
            }
            self.seen.insert(record.clone());
            self.records.push(record.clone());
            new.push(record);
        }
        if !new.is_empty() {
            self.recompute();
        }
        Ok(new)
    }

    fn recompute(&mut self) {
        // Rule 1.
        let mut ever: BTreeMap<Uuid, (VerifyingKey, String, Uuid, (u64, InviteId))> =
            BTreeMap::new();
        if let Some(RecordBody::Genesis { creator_key, .. }) = self.records.first().map(|r| &r.body)
            && let Ok(key) = VerifyingKey::from_bytes(creator_key)
        {
            ever.insert(
                self.creator,
                (key, String::new(), self.creator, (0, [0; 8])),
            );
        }
        // Rule 2, to a fixpoint: an invite counts once its signer is known.
        let mut valid_invites: BTreeSet<(Uuid, InviteId)> = BTreeSet::new();
        loop {
            let mut changed = false;
            for record in &self.records {
                let RecordBody::Invite {
                    id,
                    invitee,
                    key,
                    alias,
                    time_ms,
                } = &record.body
                else {
                    continue;
                };
                if valid_invites.contains(&(*invitee, *id)) {
                    continue;
                }
                let Some((signer_key, ..)) = ever.get(&record.signer) else {
                    continue;
                };
                if !record.verify(signer_key) {
                    continue;
                }
                let Ok(invitee_key) = VerifyingKey::from_bytes(key) else {
                    continue;
                };
                let order = (*time_ms, *id);
                match ever.get(invitee) {
                    Some((existing, ..)) if *existing != invitee_key => {
                        // A conflicting key: the earliest invitation wins.
                        let earlier = ever.get(invitee).map(|e| e.3).unwrap_or(order);
                        if order < earlier && *invitee != self.creator {
                            ever.insert(
                                *invitee,
                                (invitee_key, alias.clone(), record.signer, order),
                            );
                            valid_invites.retain(|(u, _)| u != invitee);
                            valid_invites.insert((*invitee, *id));
                            changed = true;
                        }
                        continue;
                    }
                    Some(_) => {}
                    None => {
                        ever.insert(*invitee, (invitee_key, alias.clone(), record.signer, order));
                    }
                }
                valid_invites.insert((*invitee, *id));
                changed = true;
            }
            if !changed {
                break;
            }
        }
        // Rule 3.
        let mut ended: BTreeSet<(Uuid, InviteId)> = BTreeSet::new();
        for record in &self.records {
            let RecordBody::Leave { ends, .. } = &record.body else {
                continue;
            };
            if let Some((key, ..)) = ever.get(&record.signer)
                && record.verify(key)
            {
                ended.insert((record.signer, *ends));
            }
        }
        let mut members = BTreeMap::new();
        for (uuid, (key, alias, invited_by, _)) in ever {
            let genesis_current = uuid == self.creator && !ended.contains(&(uuid, [0; 8]));
            let invited_current = valid_invites
                .iter()
                .any(|(u, id)| *u == uuid && !ended.contains(&(uuid, *id)));
            members.insert(
                uuid,
                Member {
                    uuid,
                    key,
                    alias,
                    invited_by,
                    current: genesis_current || invited_current,
                },
            );
        }
        self.members = members;
    }

    /// The room id.
    pub fn room(&self) -> RoomId {
        self.room
    }

    /// The room's name, from its genesis.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The creator.
    pub fn creator(&self) -> Uuid {
        self.creator
    }

    /// Every record, the genesis first.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Every member past and present, by UUID.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The current members.
    pub fn current(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| m.current)
    }

    /// `uuid`'s entry, if it ever was a member.
    pub fn member(&self, uuid: &Uuid) -> Option<&Member> {
        self.members.get(uuid)
    }

    /// Whether `uuid` is a member now.
    pub fn is_current(&self, uuid: &Uuid) -> bool {
        self.members.get(uuid).is_some_and(|m| m.current)
    }

    /// The membership `uuid` would end by leaving now: its genesis membership (zeros) or
    /// a current invitation.
    pub fn membership_of(&self, uuid: &Uuid) -> Option<InviteId> {
        if !self.is_current(uuid) {
            return None;
        }
        let ended: BTreeSet<InviteId> = self
            .records
            .iter()
            .filter(|r| r.signer == *uuid)
            .filter_map(|r| match r.body {
                RecordBody::Leave { ends, .. } => Some(ends),
                _ => None,
            })
            .collect();
        if *uuid == self.creator && !ended.contains(&[0; 8]) {
            return Some([0; 8]);
        }
        self.records.iter().find_map(|r| match &r.body {
            RecordBody::Invite { id, invitee, .. } if invitee == uuid && !ended.contains(id) => {
                Some(*id)
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;

    struct Person {
        uuid: Uuid,
        key: SigningKey,
    }

    fn person(n: u8) -> Person {
        Person {
            uuid: Uuid::from_bytes([n; 16]),
            key: SigningKey::from_bytes(&[n; 32]),
        }
    }

    fn invite(room: RoomId, by: &Person, who: &Person, id: u8, time_ms: u64) -> Record {
        Record::sign(
            room,
            RecordBody::Invite {
                id: [id; 8],
                invitee: who.uuid,
                key: who.key.verifying_key().to_bytes(),
                alias: format!("p{id}"),
                time_ms,
            },
            by.uuid,
            &by.key,
        )
    }

    fn leave(room: RoomId, who: &Person, ends: InviteId) -> Record {
        Record::sign(
            room,
            RecordBody::Leave { ends, time_ms: 9 },
            who.uuid,
            &who.key,
        )
    }

    #[test]
    fn invitations_chain_back_to_the_creator_in_any_order() {
        let (a, b, c, eve) = (person(1), person(2), person(3), person(4));
        let genesis = Record::genesis("r", [0; 16], a.uuid, &a.key);
        let room = genesis.room;
        // C was invited by B, who was invited by A; seen in the wrong order.
        let records = vec![
            invite(room, &b, &c, 2, 2),
            invite(room, &a, &b, 1, 1),
            genesis,
        ];
        let m = Membership::from_records(room, records).unwrap();
        let current: Vec<Uuid> = m.current().map(|m| m.uuid).collect();
        assert_eq!(current, vec![a.uuid, b.uuid, c.uuid]);
        assert_eq!(m.member(&c.uuid).unwrap().invited_by, b.uuid);
        // Eve invites herself, and forges an invitation "by A" with her own key: neither
        // counts.
        let mut m2 = m.clone();
        let fake = Record::sign(
            room,
            RecordBody::Invite {
                id: [5; 8],
                invitee: eve.uuid,
                key: eve.key.verifying_key().to_bytes(),
                alias: "eve".into(),
                time_ms: 3,
            },
            a.uuid,
            &eve.key,
        );
        m2.merge(vec![invite(room, &eve, &eve, 6, 3), fake])
            .unwrap();
        assert!(!m2.is_current(&eve.uuid));
        assert!(m2.member(&eve.uuid).is_none());
    }

    #[test]
    fn a_leave_ends_one_membership_and_a_new_invite_restores_it() {
        let (a, b) = (person(1), person(2));
        let genesis = Record::genesis("r", [0; 16], a.uuid, &a.key);
        let room = genesis.room;
        let mut m = Membership::new(genesis).unwrap();
        m.merge(vec![invite(room, &a, &b, 1, 1)]).unwrap();
        assert_eq!(m.membership_of(&b.uuid), Some([1; 8]));
        // A leave signed by someone else does nothing.
        m.merge(vec![leave(room, &a, [1; 8])]).unwrap();
        assert!(m.is_current(&b.uuid));
        let new = m.merge(vec![leave(room, &b, [1; 8])]).unwrap();
        assert_eq!(new.len(), 1);
        assert!(!m.is_current(&b.uuid));
        assert!(m.member(&b.uuid).is_some(), "still known as a past member");
        m.merge(vec![invite(room, &a, &b, 2, 5)]).unwrap();
        assert!(m.is_current(&b.uuid));
        // The creator can leave too.
        m.merge(vec![leave(room, &a, [0; 8])]).unwrap();
        assert!(!m.is_current(&a.uuid));
        // The same records again are not news.
        let again = m.records().to_vec();
        assert!(m.merge(again).unwrap().is_empty());
    }

    #[test]
    fn a_genesis_for_someone_elses_room_id_is_refused() {
        let (a, eve) = (person(1), person(4));
        let genesis = Record::genesis("r", [0; 16], a.uuid, &a.key);
        // Eve signs a genesis claiming A's room id.
        let forged = Record::sign(
            genesis.room,
            RecordBody::Genesis {
                name: "r".into(),
                nonce: [0; 16],
                creator_key: eve.key.verifying_key().to_bytes(),
            },
            eve.uuid,
            &eve.key,
        );
        assert_eq!(
            Membership::new(forged).unwrap_err(),
            MembershipError::NoGenesis
        );
    }
}
