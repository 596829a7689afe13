//! The sans-IO state machine of one room, as one member runs it.
//!
//! It never reads the clock or touches a stream: the driver (`host.rs`) feeds it
//! streams that open and close, frames that arrive and timeouts (each with `now`), and
//! pulls out frames to send ([`RoomMachine::poll_transmit`]), streams to close,
//! members to dial ([`RoomMachine::poll_dial`]) and [`RoomEvent`]s.
//!
//! Calling order: after every input drain `poll_transmit`, `poll_close`, `poll_dial`
//! and `poll_event`; then sleep until [`RoomMachine::poll_timeout`] and call
//! [`RoomMachine::handle_timeout`].
//!
//! **Sessions.** A session is one room stream with one member, set up by a Hello each
//! way. Both sides check the other is a current member (after merging the records its
//! Hello carries); a stranger gets `Refuse`. When two sessions with one member exist
//! (both dialled at once), the one opened by the lower UUID stays; a session from a
//! member's *new* epoch (it restarted) replaces the old one.
//!
//! **Mesh.** Every member dials every other current member it has no session with: at
//! once when told it is present (`Present`, `WhoReply`, server presence), else on a
//! backed-off timer. With sessions up it dials only members with a higher UUID (the
//! lower side of a pair dials, so two members rarely dial each other at once), and its
//! own invitees that nobody reports here (they may not know the room yet, so they
//! dial no one); with no session at all it dials everyone.
//!
//! **Delivery.** A message is `(sender, epoch, seq)`, signed by the sender, and sent by
//! it on every session. A receiver delivers seq `n` of an epoch only after `n − 1`,
//! holds early ones (bounded), and drops what it delivered before: each message once,
//! in the sender's order. Every keep-alive carries a digest of what the sender has
//! delivered; when two digests differ the members exchange `Have` vectors and send each
//! other what the other lacks, from the messages they keep ([`RoomConfig::history`]).
//! So a member cut off from a sender but not from everyone gets its messages through
//! others, and after a partition heals each side catches up on the other's messages.
//!
//! **Liveness.** Each session sends a Ping every `keepalive / 3`; a session that hears
//! nothing for `keepalive` is lost (a crashed member is noticed within one keep-alive
//! interval).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use uuid::Uuid;

use super::id::RoomId;
use super::membership::{Membership, MembershipError};
use super::record::{Record, RecordBody};
use super::wire::{Frame, MessageId, RoomMessage};

/// Timers and bounds of a room.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// A session that hears nothing for this long is lost; Pings go out three times
    /// per interval. Default 10 s (the peer link's own keep-alive).
    pub keepalive: Duration,
    /// First redial delay after a failed dial (then doubling).
    pub dial_backoff: Duration,
    /// Longest redial delay.
    pub dial_backoff_max: Duration,
    /// Messages kept to serve members who missed them (all senders together).
    pub history: usize,
    /// Early messages held back until the ones before them arrive.
    pub max_early: usize,
    /// The most messages sent in answer to one Have.
    pub max_resend: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(10),
            dial_backoff: Duration::from_secs(2),
            dial_backoff_max: Duration::from_secs(30),
            history: 4096,
            max_early: 1024,
            max_resend: 512,
        }
    }
}

/// Names one room stream (chosen by the driver).
pub type StreamId = u64;

/// What happened in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomEvent {
    /// A session with a member is up (it "joined" as far as we can see).
    Joined {
        /// The member.
        member: Uuid,
        /// Its own name for itself.
        alias: String,
    },
    /// A member went offline politely (it stays a member).
    Offline {
        /// The member.
        member: Uuid,
        /// What it said.
        reason: String,
    },
    /// A member's session died without a goodbye (crash, network): nothing heard for a
    /// keep-alive interval, or its link closed.
    Lost {
        /// The member.
        member: Uuid,
    },
    /// A member left the room (its signed leave record arrived).
    Left {
        /// The member.
        member: Uuid,
    },
    /// Someone was invited.
    Invited {
        /// The new member.
        member: Uuid,
        /// By whom.
        by: Uuid,
    },
    /// A message, delivered once, in its sender's order.
    Message(Delivered),
    /// Messages of a sender that nobody we reached still had: they are lost to us.
    MessagesLost {
        /// The sender.
        sender: Uuid,
        /// How many.
        count: u64,
    },
}

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Its id.
    pub id: MessageId,
    /// The sender's clock (UNIX ms).
    pub time_ms: u64,
    /// The text.
    pub text: String,
}

/// Why a room command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// We are not a member (never invited, or we left).
    #[error("you are not a member of this room")]
    NotAMember,
    /// The records are not a room.
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

#[derive(Debug)]
struct Session {
    peer: Uuid,
    opened_by_me: bool,
    /// Set once the peer's Hello arrived and it proved a member.
    established: Option<Established>,
    last_rx: Instant,
    next_ping: Instant,
}

#[derive(Debug, Clone)]
struct Established {
    epoch: u64,
    alias: String,
}

#[derive(Debug, Clone, Copy)]
struct Dial {
    next_at: Instant,
    backoff: Duration,
    in_flight: bool,
}

/// One room, as one member runs it.
#[derive(Debug)]
pub struct RoomMachine {
    config: RoomConfig,
    me: Uuid,
    key: SigningKey,
    alias: String,
    epoch: u64,
    next_seq: u64,
    membership: Membership,
    sessions: HashMap<StreamId, Session>,
    dials: HashMap<Uuid, Dial>,
    /// Members someone told us are here, and who told us.
    present: HashMap<Uuid, HashSet<Uuid>>,
    /// Per (sender, epoch): everything up to this seq was delivered.
    delivered: BTreeMap<(Uuid, u64), u64>,
    early: BTreeMap<MessageId, RoomMessage>,
    store: BTreeMap<MessageId, RoomMessage>,
    store_order: VecDeque<MessageId>,
    /// Per (sender, epoch): messages up to this seq were kept in this run and evicted
    /// since, so we may tell others they are gone.
    evicted: HashMap<(Uuid, u64), u64>,
    /// Per member: what its latest Have said it delivered.
    acks: HashMap<Uuid, HashMap<(Uuid, u64), u64>>,
    digest: Option<u64>,
    left: bool,
    transmit: VecDeque<(StreamId, Frame)>,
    closes: VecDeque<StreamId>,
    dial_out: VecDeque<Uuid>,
    events: VecDeque<RoomEvent>,
    new_records: Vec<Record>,
    dirty: bool,
}

fn key_of(id: &MessageId) -> (Uuid, u64) {
    (id.sender, id.epoch)
}

impl RoomMachine {
    /// Runs `membership` as `me` (with `key`), announcing `alias`, in a new session
    /// `epoch` (random per start); `delivered` is what an earlier run delivered (so a
    /// restart does not show messages twice).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        now: Instant,
        config: RoomConfig,
        me: Uuid,
        key: SigningKey,
        alias: String,
        epoch: u64,
        membership: Membership,
        delivered: BTreeMap<(Uuid, u64), u64>,
    ) -> Self {
        let left = !membership.is_current(&me);
        let mut m = Self {
            config,
            me,
            key,
            alias,
            epoch,
            next_seq: 1,
            membership,
            sessions: HashMap::new(),
            dials: HashMap::new(),
            present: HashMap::new(),
            delivered,
            early: BTreeMap::new(),
            store: BTreeMap::new(),
            store_order: VecDeque::new(),
            evicted: HashMap::new(),
            acks: HashMap::new(),
            digest: None,
            left,
            transmit: VecDeque::new(),
            closes: VecDeque::new(),
            dial_out: VecDeque::new(),
            events: VecDeque::new(),
            new_records: Vec::new(),
            dirty: false,
        };
        m.schedule_dials(now);
        m
    }

    // ----- getters -----

    /// The room.
    pub fn room(&self) -> RoomId {
        self.membership.room()
    }

    /// Its records and members.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Whether we are still a member.
    pub fn is_member(&self) -> bool {
        !self.left
    }

    /// Our epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Members we have a session with now, and their own names.
    pub fn here(&self) -> BTreeMap<Uuid, String> {
        self.sessions
            .values()
            .filter_map(|s| s.established.as_ref().map(|e| (s.peer, e.alias.clone())))
            .collect()
    }

    /// Members others say are here (but we have no session with).
    pub fn reported_here(&self) -> Vec<Uuid> {
        let here = self.here();
        self.present
            .iter()
            .filter(|(m, via)| !via.is_empty() && !here.contains_key(m))
            .map(|(m, _)| *m)
            .collect()
    }

    /// What we delivered, per (sender, epoch), for saving.
    pub fn delivered(&self) -> &BTreeMap<(Uuid, u64), u64> {
        &self.delivered
    }

    /// Whether `delivered` changed since the last call (the driver saves it then).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Records that arrived since the last call (the driver appends them to disk).
    pub fn take_new_records(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.new_records)
    }

    /// How many messages we sent in this epoch.
    pub fn sent(&self) -> u64 {
        self.next_seq - 1
    }

    // ----- outputs -----

    /// The next frame to write, and on which stream.
    pub fn poll_transmit(&mut self) -> Option<(StreamId, Frame)> {
        self.transmit.pop_front()
    }

    /// A stream to finish and forget.
    pub fn poll_close(&mut self) -> Option<StreamId> {
        self.closes.pop_front()
    }

    /// A member to open a room stream to (answer with
    /// [`RoomMachine::handle_stream_opened`] or [`RoomMachine::handle_dial_failed`]).
    pub fn poll_dial(&mut self) -> Option<Uuid> {
        self.dial_out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RoomEvent> {
        self.events.pop_front()
    }

    /// When to call [`RoomMachine::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.left {
            return None;
        }
        let pings = self
            .sessions
            .values()
            .flat_map(|s| [s.next_ping, s.last_rx + self.config.keepalive]);
        let dials = self
            .dials
            .values()
            .filter(|d| !d.in_flight)
            .map(|d| d.next_at);
        pings.chain(dials).min()
    }

    // ----- inputs: streams -----

    /// A room stream with `peer` is open: we dialled it (`opened_by_me`) or it came in
    /// (then its first frame, the peer's Hello, follows through `handle_frame`).
    pub fn handle_stream_opened(
        &mut self,
        now: Instant,
        stream: StreamId,
        peer: Uuid,
        opened_by_me: bool,
    ) {
        if opened_by_me && let Some(d) = self.dials.get_mut(&peer) {
            d.in_flight = false;
        }
        if self.left && opened_by_me {
            self.closes.push_back(stream);
            return;
        }
        self.sessions.insert(
            stream,
            Session {
                peer,
                opened_by_me,
                established: None,
                last_rx: now,
                next_ping: now + self.ping_interval(),
            },
        );
        if opened_by_me {
            self.send_hello(stream);
        }
    }

    /// A dial we asked for failed (peer offline, punch failed, refused).
    pub fn handle_dial_failed(&mut self, now: Instant, peer: Uuid) {
        let max = self.config.dial_backoff_max;
        let first = self.config.dial_backoff;
        if let Some(d) = self.dials.get_mut(&peer) {
            d.in_flight = false;
            d.next_at = now + d.backoff;
            d.backoff = (d.backoff * 2).clamp(first, max);
        }
    }

    /// A stream ended (the peer closed it, or its link died).
    pub fn handle_stream_closed(&mut self, now: Instant, stream: StreamId) {
        let Some(session) = self.sessions.remove(&stream) else {
            return;
        };
        let peer = session.peer;
        if session.established.is_none() {
            if session.opened_by_me {
                self.handle_dial_failed(now, peer);
            }
            return;
        }
        if !self.has_session_with(&peer) {
            self.events.push_back(RoomEvent::Lost { member: peer });
            self.gone(now, peer);
        }
    }

    /// Server presence: a member who is also a contact came online (dial it now) or went
    /// offline.
    pub fn handle_presence(&mut self, now: Instant, member: Uuid, online: bool) {
        if online && !self.has_session_with(&member) && self.membership.is_current(&member) {
            self.dial_soon(now, member);
        }
    }

    // ----- inputs: frames -----

    /// A frame arrived on `stream`.
    pub fn handle_frame(&mut self, now: Instant, stream: StreamId, frame: Frame) {
        let Some(session) = self.sessions.get_mut(&stream) else {
            return;
        };
        session.last_rx = now;
        let peer = session.peer;
        let established = session.established.is_some();
        match frame {
            Frame::Hello {
                room,
                epoch,
                alias,
                records,
            } => self.on_hello(now, stream, peer, room, epoch, alias, records),
            _ if !established => {
                // Nothing but Hello before the session is up.
                self.refuse(stream, "Hello expected first");
            }
            Frame::Records(records) => self.on_records(now, records, Some(stream)),
            Frame::Who => {
                let others: Vec<Uuid> = self.here().into_keys().filter(|m| *m != peer).collect();
                self.transmit.push_back((stream, Frame::WhoReply(others)));
            }
            Frame::WhoReply(members) => {
                for m in members {
                    self.on_present(now, peer, m, true);
                }
            }
            Frame::Present { member, present } => self.on_present(now, peer, member, present),
            Frame::Message(m) => self.on_message(m),
            Frame::Ping { digest } => {
                if digest != self.digest() {
                    self.transmit.push_back((
                        stream,
                        Frame::Have {
                            reply: false,
                            entries: self.have(),
                        },
                    ));
                }
            }
            Frame::Have { reply, entries } => self.on_have(stream, reply, &entries),
            Frame::Gap(id) => self.on_gap(id),
            Frame::Bye(reason) => {
                self.sessions.remove(&stream);
                self.closes.push_back(stream);
                if !self.has_session_with(&peer) {
                    self.events.push_back(RoomEvent::Offline {
                        member: peer,
                        reason,
                    });
                    self.gone(now, peer);
                }
            }
            Frame::Refuse(reason) => {
                tracing::info!(%peer, %reason, "room session refused");
                self.sessions.remove(&stream);
                self.closes.push_back(stream);
                self.handle_dial_failed(now, peer);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_hello(
        &mut self,
        now: Instant,
        stream: StreamId,
        peer: Uuid,
        room: RoomId,
        epoch: u64,
        alias: String,
        records: Vec<Record>,
    ) {
        if room != self.room() {
            self.refuse(stream, "unknown room");
            return;
        }
        self.on_records(now, records, None);
        if self.left {
            // We left: our Hello carries the leave record, then we say goodbye.
            self.send_hello(stream);
            self.transmit
                .push_back((stream, Frame::Bye("left the room".to_owned())));
            self.closes.push_back(stream);
            self.sessions.remove(&stream);
            return;
        }
        if !self.membership.is_current(&peer) {
            self.refuse(stream, "not a member of this room");
            return;
        }
        let Some(session) = self.sessions.get_mut(&stream) else {
            return;
        };
        if session.established.is_some() {
            return;
        }
        let opened_by_me = session.opened_by_me;
        session.established = Some(Established {
            epoch,
            alias: alias.clone(),
        });
        if !opened_by_me {
            self.send_hello(stream);
        }
        // Two sessions with one member: a new epoch replaces the old; else the one the
        // lower UUID opened stays.
        let others: Vec<(StreamId, bool, u64)> = self
            .sessions
            .iter()
            .filter(|(id, s)| **id != stream && s.peer == peer)
            .filter_map(|(id, s)| {
                s.established
                    .as_ref()
                    .map(|e| (*id, s.opened_by_me, e.epoch))
            })
            .collect();
        let mut keep_new = true;
        for (other, other_mine, other_epoch) in &others {
            let drop_other = if *other_epoch != epoch {
                true
            } else {
                let lower_is_me = self.me < peer;
                // Keep the session opened by the lower UUID.
                let new_by_lower = opened_by_me == lower_is_me;
                let other_by_lower = *other_mine == lower_is_me;
                new_by_lower && !other_by_lower
            };
            if drop_other {
                self.sessions.remove(other);
                self.closes.push_back(*other);
            } else {
                keep_new = false;
            }
        }
        if !keep_new {
            self.sessions.remove(&stream);
            self.closes.push_back(stream);
            return;
        }
        if let Some(d) = self.dials.get_mut(&peer) {
            d.backoff = self.config.dial_backoff;
        }
        self.dials.remove(&peer);
        if others.is_empty() {
            self.events.push_back(RoomEvent::Joined {
                member: peer,
                alias,
            });
            // Tell the others, and ask who else is here (PeerChat's who / who-reply).
            let streams: Vec<StreamId> = self.established_streams(Some(peer));
            for s in streams {
                self.transmit.push_back((
                    s,
                    Frame::Present {
                        member: peer,
                        present: true,
                    },
                ));
            }
        }
        self.transmit.push_back((stream, Frame::Who));
        self.transmit.push_back((
            stream,
            Frame::Have {
                reply: false,
                entries: self.have(),
            },
        ));
        self.schedule_dials(now);
    }

    fn on_records(&mut self, now: Instant, records: Vec<Record>, from: Option<StreamId>) {
        let was: HashSet<Uuid> = self.membership.current().map(|m| m.uuid).collect();
        let new = match self.membership.merge(records) {
            Ok(new) => new,
            Err(e) => {
                tracing::debug!(error = %e, "room records refused");
                return;
            }
        };
        if new.is_empty() {
            return;
        }
        self.new_records.extend(new.iter().cloned());
        // Pass them on to every other session.
        for s in self.established_streams(None) {
            if Some(s) != from {
                self.transmit.push_back((s, Frame::Records(new.clone())));
            }
        }
        let now_current: HashSet<Uuid> = self.membership.current().map(|m| m.uuid).collect();
        for r in &new {
            if let RecordBody::Invite { invitee, .. } = &r.body
                && now_current.contains(invitee)
                && !was.contains(invitee)
            {
                self.events.push_back(RoomEvent::Invited {
                    member: *invitee,
                    by: r.signer,
                });
            }
        }
        for gone in was.difference(&now_current) {
            if *gone == self.me {
                // Our own leave (from this run, or from another terminal's store).
                self.left = true;
                self.quit("left the room");
                continue;
            }
            self.events.push_back(RoomEvent::Left { member: *gone });
            let streams: Vec<StreamId> = self
                .sessions
                .iter()
                .filter(|(_, s)| s.peer == *gone)
                .map(|(id, _)| *id)
                .collect();
            for s in streams {
                self.sessions.remove(&s);
                self.closes.push_back(s);
            }
            self.dials.remove(gone);
            self.present.remove(gone);
        }
        self.schedule_dials(now);
    }

    fn on_present(&mut self, now: Instant, via: Uuid, member: Uuid, present: bool) {
        if member == self.me || !self.membership.is_current(&member) {
            return;
        }
        let set = self.present.entry(member).or_default();
        if present {
            set.insert(via);
            if !self.has_session_with(&member) && (self.me < member || self.sessions.is_empty()) {
                self.dial_soon(now, member);
            }
        } else {
            set.remove(&via);
        }
    }

    fn on_message(&mut self, m: RoomMessage) {
        let Some(sender) = self.membership.member(&m.id.sender) else {
            return;
        };
        if m.id.sender == self.me || !m.verify(&self.room(), &sender.key) {
            return;
        }
        let done = self.delivered.get(&key_of(&m.id)).copied().unwrap_or(0);
        if m.id.seq <= done {
            return;
        }
        if m.id.seq > done + 1 {
            if self.early.len() < self.config.max_early {
                self.early.insert(m.id, m);
            }
            return;
        }
        self.deliver(m);
        // Everything held back that now follows.
        while let Some((&id, _)) = self
            .early
            .iter()
            .find(|(id, _)| id.seq == self.delivered.get(&key_of(id)).copied().unwrap_or(0) + 1)
        {
            if let Some(next) = self.early.remove(&id) {
                self.deliver(next);
            }
        }
        // Drop held-back duplicates of what is now delivered.
        let delivered = &self.delivered;
        self.early
            .retain(|id, _| id.seq > delivered.get(&key_of(id)).copied().unwrap_or(0));
    }

    fn deliver(&mut self, m: RoomMessage) {
        self.delivered.insert(key_of(&m.id), m.id.seq);
        self.prune_epochs(m.id.sender);
        self.digest = None;
        self.dirty = true;
        self.events.push_back(RoomEvent::Message(Delivered {
            id: m.id,
            time_ms: m.time_ms,
            text: m.text.clone(),
        }));
        self.keep(m);
    }

    /// Keeps at most 8 epochs per sender (older sessions of it are long over).
    fn prune_epochs(&mut self, sender: Uuid) {
        let epochs: Vec<(Uuid, u64)> = self
            .delivered
            .range((sender, 0)..=(sender, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        if epochs.len() > 8 {
            // The epoch with the fewest messages is the likeliest to be a short old one.
            if let Some(k) = epochs.iter().min_by_key(|k| self.delivered.get(k)) {
                self.delivered.remove(k);
            }
        }
    }

    fn keep(&mut self, m: RoomMessage) {
        self.store_order.push_back(m.id);
        self.store.insert(m.id, m);
        while self.store_order.len() > self.config.history {
            if let Some(old) = self.store_order.pop_front() {
                self.store.remove(&old);
                let e = self.evicted.entry(key_of(&old)).or_insert(0);
                *e = (*e).max(old.seq);
            }
        }
    }

    fn on_have(&mut self, stream: StreamId, reply: bool, entries: &[MessageId]) {
        let peer = stream_peer(&self.sessions, stream);
        let theirs: HashMap<(Uuid, u64), u64> =
            entries.iter().map(|e| (key_of(e), e.seq)).collect();
        let mut budget = self.config.max_resend;
        for entry in self.have() {
            let have = theirs.get(&key_of(&entry)).copied().unwrap_or(0);
            if entry.seq <= have || entry.sender == peer || budget == 0 {
                continue;
            }
            // What we kept and evicted since: those are gone, as far as we can tell.
            let evicted = self.evicted.get(&key_of(&entry)).copied().unwrap_or(0);
            if evicted > have {
                self.transmit.push_back((
                    stream,
                    Frame::Gap(MessageId {
                        seq: evicted.min(entry.seq),
                        ..entry
                    }),
                ));
            }
            let from = MessageId {
                seq: have.max(evicted) + 1,
                ..entry
            };
            // Messages we never kept (from before a restart) are skipped: another member
            // may still have them.
            let kept: Vec<RoomMessage> = self
                .store
                .range(from..=entry)
                .take(budget)
                .map(|(_, m)| m.clone())
                .collect();
            budget -= kept.len();
            for m in kept {
                self.transmit.push_back((stream, Frame::Message(m)));
            }
        }
        self.acks.insert(peer, theirs);
        if !reply {
            self.transmit.push_back((
                stream,
                Frame::Have {
                    reply: true,
                    entries: self.have(),
                },
            ));
        }
    }

    fn on_gap(&mut self, id: MessageId) {
        if id.sender == self.me {
            return;
        }
        let done = self.delivered.get(&key_of(&id)).copied().unwrap_or(0);
        if id.seq <= done {
            return;
        }
        // Anything held back within the gap is still deliverable, in order.
        let held: Vec<MessageId> = self
            .early
            .range(
                MessageId {
                    seq: done + 1,
                    ..id
                }..=id,
            )
            .map(|(k, _)| *k)
            .collect();
        let mut at = done;
        for k in held {
            if let Some(m) = self.early.remove(&k) {
                if k.seq > at + 1 {
                    self.events.push_back(RoomEvent::MessagesLost {
                        sender: id.sender,
                        count: k.seq - at - 1,
                    });
                }
                self.delivered.insert(key_of(&k), k.seq - 1);
                at = k.seq;
                self.deliver(m);
            }
        }
        if id.seq > at {
            self.events.push_back(RoomEvent::MessagesLost {
                sender: id.sender,
                count: id.seq - at,
            });
            self.delivered.insert(key_of(&id), id.seq);
            self.digest = None;
            self.dirty = true;
        }
    }

    // ----- inputs: time -----

    /// Time passed: keep-alives, lost sessions, dials.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.left {
            return;
        }
        let keepalive = self.config.keepalive;
        let interval = self.ping_interval();
        let digest = self.digest();
        let mut lost = Vec::new();
        for (id, s) in &mut self.sessions {
            if now >= s.last_rx + keepalive {
                lost.push(*id);
            } else if now >= s.next_ping {
                s.next_ping = now + interval;
                if s.established.is_some() {
                    self.transmit.push_back((*id, Frame::Ping { digest }));
                }
            }
        }
        for id in lost {
            tracing::debug!(stream = id, "room session silent for a keep-alive interval");
            self.closes.push_back(id);
            self.handle_stream_closed(now, id);
        }
        self.schedule_dials(now);
        let due: Vec<Uuid> = self
            .dials
            .iter()
            .filter(|(_, d)| !d.in_flight && now >= d.next_at)
            .map(|(u, _)| *u)
            .collect();
        for peer in due {
            if let Some(d) = self.dials.get_mut(&peer) {
                d.in_flight = true;
            }
            self.dial_out.push_back(peer);
        }
    }

    // ----- commands -----

    /// Sends `text` to every member; returns its id.
    pub fn send_message(
        &mut self,
        _now: Instant,
        time_ms: u64,
        text: &str,
    ) -> Result<MessageId, RoomError> {
        if self.left {
            return Err(RoomError::NotAMember);
        }
        let id = MessageId {
            sender: self.me,
            epoch: self.epoch,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        let m = RoomMessage::sign(&self.room(), id, time_ms, text, &self.key);
        for s in self.established_streams(None) {
            self.transmit.push_back((s, Frame::Message(m.clone())));
        }
        self.keep(m);
        self.digest = None;
        Ok(id)
    }

    /// Adds `record` (an invitation we signed, or one from the local store) and passes
    /// it on.
    pub fn add_records(&mut self, now: Instant, records: Vec<Record>) {
        self.on_records(now, records, None);
    }

    /// Leaves the room: signs a leave record, passes it on, says goodbye, closes every
    /// session. Returns the record (to store).
    pub fn leave(&mut self, now: Instant, time_ms: u64) -> Result<Record, RoomError> {
        let ends = self
            .membership
            .membership_of(&self.me)
            .ok_or(RoomError::NotAMember)?;
        let record = Record::sign(
            self.room(),
            RecordBody::Leave { ends, time_ms },
            self.me,
            &self.key,
        );
        self.on_records(now, vec![record.clone()], None);
        self.left = true;
        self.quit("left the room");
        Ok(record)
    }

    /// Goes offline politely: Bye on every session, then closes them (we stay a member).
    pub fn quit(&mut self, reason: &str) {
        let streams: Vec<StreamId> = self.sessions.keys().copied().collect();
        for s in streams {
            self.transmit.push_back((s, Frame::Bye(reason.to_owned())));
            self.closes.push_back(s);
        }
        self.sessions.clear();
        self.dials.clear();
    }

    /// Asks every session what its member has delivered (the answers show who has our
    /// messages; see [`RoomMachine::acked_by`]).
    pub fn request_acks(&mut self) {
        for s in self.established_streams(None) {
            self.transmit.push_back((
                s,
                Frame::Have {
                    reply: false,
                    entries: self.have(),
                },
            ));
        }
    }

    // ----- internals -----

    fn ping_interval(&self) -> Duration {
        self.config.keepalive / 3
    }

    fn has_session_with(&self, peer: &Uuid) -> bool {
        self.sessions
            .values()
            .any(|s| s.peer == *peer && s.established.is_some())
    }

    fn established_streams(&self, except: Option<Uuid>) -> Vec<StreamId> {
        let mut v: Vec<StreamId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.established.is_some() && Some(s.peer) != except)
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }

    fn send_hello(&mut self, stream: StreamId) {
        self.transmit.push_back((
            stream,
            Frame::Hello {
                room: self.room(),
                epoch: self.epoch,
                alias: self.alias.clone(),
                records: self.membership.records().to_vec(),
            },
        ));
    }

    fn refuse(&mut self, stream: StreamId, why: &str) {
        self.transmit
            .push_back((stream, Frame::Refuse(why.to_owned())));
        self.closes.push_back(stream);
        self.sessions.remove(&stream);
    }

    /// `peer` is gone from our sessions: tell the others, and keep trying to reach it.
    fn gone(&mut self, now: Instant, peer: Uuid) {
        for s in self.established_streams(None) {
            self.transmit.push_back((
                s,
                Frame::Present {
                    member: peer,
                    present: false,
                },
            ));
        }
        self.schedule_dials(now);
    }

    /// Whether `member` may not know the room exists: we invited it and nobody says it
    /// is here. An invitee with nothing stored learns of the room only when a member
    /// reaches it, and it never dials anyone, so its inviter keeps dialling it whatever
    /// their UUIDs; once others see it here, the lower UUID of each pair dials again.
    fn may_not_know_the_room(&self, member: &super::membership::Member) -> bool {
        member.invited_by == self.me
            && self
                .present
                .get(&member.uuid)
                .is_none_or(|via| via.is_empty())
    }

    fn dial_soon(&mut self, now: Instant, peer: Uuid) {
        let first = self.config.dial_backoff;
        let d = self.dials.entry(peer).or_insert(Dial {
            next_at: now,
            backoff: first,
            in_flight: false,
        });
        if !d.in_flight {
            d.next_at = now;
            d.backoff = first;
        }
    }

    /// Which members we should be dialling: everyone without a session while we have
    /// none, else those with a higher UUID than ours.
    fn schedule_dials(&mut self, now: Instant) {
        if self.left {
            self.dials.clear();
            return;
        }
        let lonely = !self.sessions.values().any(|s| s.established.is_some());
        let wanted: Vec<Uuid> = self
            .membership
            .current()
            .filter(|m| m.uuid != self.me && !self.has_session_with(&m.uuid))
            .filter(|m| lonely || self.me < m.uuid || self.may_not_know_the_room(m))
            .map(|m| m.uuid)
            .collect();
        let first = self.config.dial_backoff;
        self.dials.retain(|u, d| wanted.contains(u) || d.in_flight);
        for u in wanted {
            self.dials.entry(u).or_insert(Dial {
                next_at: now,
                backoff: first,
                in_flight: false,
            });
        }
    }

    /// (sender, epoch, delivered seq) for everything we have, ours included.
    fn have(&self) -> Vec<MessageId> {
        let mut v: Vec<MessageId> = self
            .delivered
            .iter()
            .map(|((sender, epoch), seq)| MessageId {
                sender: *sender,
                epoch: *epoch,
                seq: *seq,
            })
            .collect();
        if self.next_seq > 1 {
            v.push(MessageId {
                sender: self.me,
                epoch: self.epoch,
                seq: self.next_seq - 1,
            });
        }
        v
    }

    fn digest(&mut self) -> u64 {
        if let Some(d) = self.digest {
            return d;
        }
        let mut entries = self.have();
        entries.sort_unstable();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for e in &entries {
            ctx.update(e.sender.as_bytes());
            ctx.update(&e.epoch.to_be_bytes());
            ctx.update(&e.seq.to_be_bytes());
        }
        let out = ctx.finish();
        let mut first = [0u8; 8];
        first.copy_from_slice(out.as_ref().get(..8).unwrap_or(&[0; 8]));
        let d = u64::from_be_bytes(first);
        self.digest = Some(d);
        d
    }

    /// Whether `member`'s latest Have showed it has message `id`.
    pub fn acked_by(&self, member: &Uuid, id: &MessageId) -> bool {
        self.acks
            .get(member)
            .and_then(|a| a.get(&key_of(id)))
            .is_some_and(|seq| *seq >= id.seq)
    }
}

fn stream_peer(sessions: &HashMap<StreamId, Session>, stream: StreamId) -> Uuid {
    sessions.get(&stream).map(|s| s.peer).unwrap_or_default()
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
