//! The tokio driver of a client's rooms: one task that feeds every active room's
//! [`RoomMachine`] and executes what it asks for.
//!
//! - Streams: each room stream gets a reader task (frames in, through one bounded
//!   channel to the host) and a writer task (frames out, through a bounded queue per
//!   stream: a member that does not read cannot stall the room; when its queue is full
//!   its stream is closed and it catches up through `Have` later).
//! - Dials: a machine's [`RoomMachine::poll_dial`] becomes [`Peers::link`] with the key
//!   the room's records give, then a new room stream on that link.
//! - Incoming room streams: routed by the room id of their Hello. A Hello for a room we
//!   do not have is an **invitation**: if its records prove we are a member, the room is
//!   stored and (when [`HostOptions::accept_invites`] allows) joined.
//! - Server presence: a member that is also a contact and comes online is dialled now.
//! - Disk: new records are appended to the room's store; delivery state is saved at
//!   most once a second and when the host stops; a records file that grew (a
//!   `chatr room invite` from another terminal) is read again.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::id::RoomId;
use super::machine::{RoomConfig, RoomError, RoomEvent, RoomMachine, StreamId};
use super::membership::Membership;
use super::record::{Record, RecordBody};
use super::store::{RoomStore, StoreError};
use super::wire::{Frame, MessageId, decode_frame};
use crate::identity::Identity;
use crate::link::{LinkStream, StreamKind};
use crate::node::PresenceView;
use crate::peers::Peers;

/// Frames queued for one room stream before it counts as stuck.
const STREAM_QUEUE: usize = 256;
/// How long an incoming room stream has to send its Hello.
const HELLO_WAIT: Duration = Duration::from_secs(10);

/// Which invitations the host accepts on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptInvites {
    /// Every room whose records prove we are a member (`listen`, `tui`).
    All,
    /// Only rooms with this name (`chatr room join NAME`, waiting for its invitation).
    Named(String),
    /// None: rooms we do not have are refused.
    None,
}

/// How the host runs.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Our name for ourselves, sent in every Hello.
    pub alias: String,
    /// Rooms to run: `None` for every room in the store.
    pub rooms: Option<Vec<RoomId>>,
    /// Invitations accepted without asking.
    pub accept_invites: AcceptInvites,
    /// The machines' timers.
    pub config: RoomConfig,
}

/// What the host tells its user.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomHostEvent {
    /// Something happened in a room.
    Room {
        /// The room.
        room: RoomId,
        /// What.
        event: RoomEvent,
    },
    /// A room was added: an invitation arrived from `from` (or we created it).
    Added {
        /// The room.
        room: RoomId,
        /// Its name.
        name: String,
        /// The member whose stream carried the invitation.
        from: Option<Uuid>,
    },
}

/// A member as the host describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member.
    pub uuid: Uuid,
    /// What it calls itself (when here), else its inviter's alias for it.
    pub alias: String,
    /// Whether we have a session with it now.
    pub here: bool,
    /// Whether others say it is here (while we have no session with it).
    pub reported: bool,
}

/// One room, as the host describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    /// The room.
    pub room: RoomId,
    /// Its name.
    pub name: String,
    /// Its current members (us included).
    pub members: Vec<MemberInfo>,
    /// Whether we are still a member.
    pub member: bool,
}

/// Why a host command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The room is not running here.
    #[error("no such room is running here")]
    NoRoom,
    /// The room refused.
    #[error(transparent)]
    Room(#[from] RoomError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The host stopped.
    #[error("the room host stopped")]
    Stopped,
}

enum Command {
    Send(
        RoomId,
        String,
        oneshot::Sender<Result<MessageId, HostError>>,
    ),
    Invite(
        RoomId,
        Uuid,
        VerifyingKey,
        String,
        oneshot::Sender<Result<(), HostError>>,
    ),
    Leave(RoomId, oneshot::Sender<Result<(), HostError>>),
    Info(RoomId, oneshot::Sender<Option<RoomInfo>>),
    List(oneshot::Sender<Vec<RoomInfo>>),
    Acked(RoomId, MessageId, oneshot::Sender<Vec<Uuid>>),
    RequestAcks(RoomId),
    Stop(oneshot::Sender<()>),
}

enum Input {
    /// A frame (or the end) on one of our streams.
    Frame(StreamId, Option<Frame>),
    /// A stream we dialled is open.
    Opened(RoomId, Uuid, LinkStream),
    /// A dial failed.
    DialFailed(RoomId, Uuid),
    /// An incoming stream sent its Hello.
    Incoming(Uuid, LinkStream, Frame),
}

/// Handle to the room host. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RoomHost {
    commands: mpsc::Sender<Command>,
}

struct Stream {
    room: RoomId,
    out: mpsc::Sender<Frame>,
}

struct Host {
    me: Identity,
    peers: Peers,
    store: RoomStore,
    options: HostOptions,
    machines: BTreeMap<RoomId, RoomMachine>,
    records_len: HashMap<RoomId, u64>,
    streams: HashMap<StreamId, Stream>,
    next_stream: StreamId,
    inputs_tx: mpsc::Sender<Input>,
    events: mpsc::Sender<RoomHostEvent>,
    last_save: Instant,
    presence: watch::Receiver<PresenceView>,
    presence_seen: PresenceView,
}

fn time_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl RoomHost {
    /// Starts the host over `peers` (whose room streams it takes), for `me`, with the
    /// rooms of `store`. Events go to the returned channel (keep draining it).
    pub fn start(
        peers: Peers,
        room_streams: mpsc::Receiver<(Uuid, LinkStream)>,
        me: Identity,
        store: RoomStore,
        options: HostOptions,
    ) -> Result<(RoomHost, mpsc::Receiver<RoomHostEvent>), HostError> {
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (events_tx, events_rx) = mpsc::channel(4096);
        let (inputs_tx, inputs_rx) = mpsc::channel(1024);
        let presence = peers.client().presence();
        let mut host = Host {
            me,
            peers,
            store,
            options,
            machines: BTreeMap::new(),
            records_len: HashMap::new(),
            streams: HashMap::new(),
            next_stream: 1,
            inputs_tx,
            events: events_tx,
            last_save: Instant::now(),
            presence,
            presence_seen: PresenceView::default(),
        };
        let rooms = match host.options.rooms.clone() {
            Some(rooms) => rooms,
            None => host.store.list()?,
        };
        for room in rooms {
            let membership = host.store.load(&room)?;
            host.run_room(membership);
        }
        tokio::spawn(host.run(cmd_rx, inputs_rx, room_streams));
        Ok((RoomHost { commands: cmd_tx }, events_rx))
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, HostError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| HostError::Stopped)?;
        rx.await.map_err(|_| HostError::Stopped)
    }

    /// Sends `text` to `room`.
    pub async fn send(&self, room: RoomId, text: String) -> Result<MessageId, HostError> {
        self.ask(|tx| Command::Send(room, text, tx)).await?
    }

    /// Invites `uuid` (with `key`, called `alias`) to `room`.
    pub async fn invite(
        &self,
        room: RoomId,
        uuid: Uuid,
        key: VerifyingKey,
        alias: String,
    ) -> Result<(), HostError> {
        self.ask(|tx| Command::Invite(room, uuid, key, alias, tx))
            .await?
    }

    /// Leaves `room` for good (a new invitation is needed to come back).
    pub async fn leave(&self, room: RoomId) -> Result<(), HostError> {
        self.ask(|tx| Command::Leave(room, tx)).await?
    }

    /// Who is in `room`.
    pub async fn info(&self, room: RoomId) -> Result<Option<RoomInfo>, HostError> {
        self.ask(|tx| Command::Info(room, tx)).await
    }

    /// Every running room.
    pub async fn list(&self) -> Result<Vec<RoomInfo>, HostError> {
        self.ask(Command::List).await
    }

    /// The members whose latest `Have` shows they have message `id` (ask with
    /// [`RoomHost::request_acks`] first).
    pub async fn acked(&self, room: RoomId, id: MessageId) -> Result<Vec<Uuid>, HostError> {
        self.ask(|tx| Command::Acked(room, id, tx)).await
    }

    /// Asks every member we have a session with what it has delivered.
    pub async fn request_acks(&self, room: RoomId) -> Result<(), HostError> {
        self.commands
            .send(Command::RequestAcks(room))
            .await
            .map_err(|_| HostError::Stopped)
    }

    /// Says goodbye in every room, saves, and stops.
    pub async fn stop(&self) {
        let _ = self.ask(Command::Stop).await;
    }
}

impl Host {
    fn run_room(&mut self, membership: Membership) {
        let room = membership.room();
        if self.machines.contains_key(&room) {
            return;
        }
        let delivered = self.store.delivered(&room);
        let epoch = rand::random::<u64>();
        let machine = RoomMachine::new(
            Instant::now(),
            self.options.config.clone(),
            self.me.uuid(),
            self.me.signing_key().clone(),
            self.options.alias.clone(),
            epoch,
            membership,
            delivered,
        );
        self.records_len.insert(room, self.store.records_len(&room));
        self.machines.insert(room, machine);
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut inputs: mpsc::Receiver<Input>,
        mut room_streams: mpsc::Receiver<(Uuid, LinkStream)>,
    ) {
        let mut reload = tokio::time::interval(Duration::from_secs(2));
        loop {
            self.pump().await;
            let deadline = self
                .machines
                .values()
                .filter_map(RoomMachine::poll_timeout)
                .min();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Stop(done)) => {
                        self.stop().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(cmd) => self.command(cmd),
                    None => {
                        self.stop().await;
                        return;
                    }
                },
                Some(input) = inputs.recv() => self.input(input),
                Some((peer, stream)) = room_streams.recv() => self.incoming(peer, stream),
                Ok(()) = self.presence.changed() => self.presence_changed(),
                _ = reload.tick() => self.reload_records(),
                () = sleep => {
                    let now = Instant::now();
                    for m in self.machines.values_mut() {
                        if m.poll_timeout().is_some_and(|t| t <= now) {
                            m.handle_timeout(now);
                        }
                    }
                }
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Send(room, text, reply) => {
                let result = match self.machines.get_mut(&room) {
                    Some(m) => m
                        .send_message(now, time_ms(), &text)
                        .map_err(HostError::from),
                    None => Err(HostError::NoRoom),
                };
                let _ = reply.send(result);
            }
            Command::Invite(room, uuid, key, alias, reply) => {
                let result = self.invite(now, room, uuid, key, alias);
                let _ = reply.send(result);
            }
            Command::Leave(room, reply) => {
                let result = match self.machines.get_mut(&room) {
                    Some(m) => m.leave(now, time_ms()).map(|_| ()).map_err(HostError::from),
                    None => Err(HostError::NoRoom),
                };
                let _ = reply.send(result);
            }
            Command::Info(room, reply) => {
                let _ = reply.send(self.machines.get(&room).map(info_of));
            }
            Command::List(reply) => {
                let _ = reply.send(self.machines.values().map(info_of).collect());
            }
            Command::Acked(room, id, reply) => {
                let acked = self.machines.get(&room).map_or_else(Vec::new, |m| {
                    m.here()
                        .into_keys()
                        .filter(|member| m.acked_by(member, &id))
                        .collect()
                });
                let _ = reply.send(acked);
            }
            Command::RequestAcks(room) => {
                if let Some(m) = self.machines.get_mut(&room) {
                    m.request_acks();
                }
            }
            Command::Stop(_) => {}
        }
    }

    fn invite(
        &mut self,
        now: Instant,
        room: RoomId,
        uuid: Uuid,
        key: VerifyingKey,
        alias: String,
    ) -> Result<(), HostError> {
        let m = self.machines.get_mut(&room).ok_or(HostError::NoRoom)?;
        if !m.is_member() {
            return Err(RoomError::NotAMember.into());
        }
        let record = Record::sign(
            room,
            RecordBody::Invite {
                id: rand::random(),
                invitee: uuid,
                key: key.to_bytes(),
                alias,
                time_ms: time_ms(),
            },
            self.me.uuid(),
            self.me.signing_key(),
        );
        m.add_records(now, vec![record]);
        Ok(())
    }

    fn input(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Frame(stream, frame) => {
                let Some(room) = self.streams.get(&stream).map(|s| s.room) else {
                    return;
                };
                let Some(m) = self.machines.get_mut(&room) else {
                    return;
                };
                match frame {
                    Some(frame) => m.handle_frame(now, stream, frame),
                    None => {
                        self.streams.remove(&stream);
                        m.handle_stream_closed(now, stream);
                    }
                }
            }
            Input::Opened(room, peer, link_stream) => {
                let id = self.attach(room, peer, link_stream);
                if let Some(m) = self.machines.get_mut(&room) {
                    m.handle_stream_opened(now, id, peer, true);
                }
            }
            Input::DialFailed(room, peer) => {
                if let Some(m) = self.machines.get_mut(&room) {
                    m.handle_dial_failed(now, peer);
                }
            }
            Input::Incoming(peer, link_stream, hello) => {
                self.route_hello(now, peer, link_stream, hello)
            }
        }
    }

    /// Routes the Hello of an incoming stream to its room, or takes it as an invitation.
    fn route_hello(&mut self, now: Instant, peer: Uuid, link_stream: LinkStream, hello: Frame) {
        let Frame::Hello { room, records, .. } = &hello else {
            return;
        };
        let room = *room;
        if !self.machines.contains_key(&room) {
            let invited = Membership::from_records(room, records.clone())
                .ok()
                .filter(|m| m.is_current(&self.me.uuid()));
            let accept = match (&invited, &self.options.accept_invites) {
                (Some(_), AcceptInvites::All) => true,
                (Some(m), AcceptInvites::Named(name)) => m.name() == name,
                _ => false,
            };
            let Some(membership) = invited.filter(|_| accept) else {
                tokio::spawn(refuse(link_stream, "unknown room"));
                return;
            };
            if let Err(e) = self.store.append(&room, membership.records()) {
                tracing::warn!(error = %e, "cannot store a room we were invited to");
            }
            let name = membership.name().to_owned();
            self.run_room(membership);
            self.emit(RoomHostEvent::Added {
                room,
                name,
                from: Some(peer),
            });
        }
        let id = self.attach(room, peer, link_stream);
        if let Some(m) = self.machines.get_mut(&room) {
            m.handle_stream_opened(now, id, peer, false);
            m.handle_frame(now, id, hello);
        }
    }

    /// Starts the reader and writer tasks of a room stream; returns its id.
    fn attach(&mut self, room: RoomId, peer: Uuid, link_stream: LinkStream) -> StreamId {
        let id = self.next_stream;
        self.next_stream += 1;
        let (out_tx, mut out_rx) = mpsc::channel::<Frame>(STREAM_QUEUE);
        let (mut send, mut recv) = link_stream.into_split();
        tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if send.write_all(&frame.encode()).await.is_err() {
                    break;
                }
            }
            let _ = send.finish();
        });
        let inputs = self.inputs_tx.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 16 * 1024];
            'read: loop {
                loop {
                    match decode_frame(&buf) {
                        Ok(Some((frame, used))) => {
                            buf.drain(..used);
                            if inputs.send(Input::Frame(id, Some(frame))).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "bad room frame; closing the stream");
                            break 'read;
                        }
                    }
                }
                match recv.read(&mut chunk).await {
                    Ok(None) | Err(_) => break,
                    Ok(Some(n)) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                }
            }
            let _ = recv.stop(crate::link::CloseCode::Normal.to_varint());
            let _ = inputs.send(Input::Frame(id, None)).await;
        });
        self.streams.insert(id, Stream { room, out: out_tx });
        id
    }

    fn incoming(&mut self, peer: Uuid, mut link_stream: LinkStream) {
        let inputs = self.inputs_tx.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 16 * 1024];
            let hello = tokio::time::timeout(HELLO_WAIT, async {
                loop {
                    match decode_frame(&buf) {
                        Ok(Some((frame, used))) => {
                            buf.drain(..used);
                            return Some(frame);
                        }
                        Ok(None) => {}
                        Err(_) => return None,
                    }
                    match link_stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    }
                }
            })
            .await;
            match hello {
                Ok(Some(hello @ Frame::Hello { .. })) if buf.is_empty() => {
                    let _ = inputs.send(Input::Incoming(peer, link_stream, hello)).await;
                }
                _ => link_stream.abort(crate::link::CloseCode::Protocol),
            }
        });
    }

    fn presence_changed(&mut self) {
        let now_view = self.presence.borrow_and_update().clone();
        let now = Instant::now();
        for (uuid, _old, new) in now_view.changes_since(&self.presence_seen) {
            for m in self.machines.values_mut() {
                m.handle_presence(now, uuid, new.is_some());
            }
        }
        self.presence_seen = now_view;
    }

    fn reload_records(&mut self) {
        let now = Instant::now();
        let rooms: Vec<RoomId> = self.machines.keys().copied().collect();
        for room in rooms {
            let len = self.store.records_len(&room);
            if self.records_len.get(&room).copied() == Some(len) {
                continue;
            }
            self.records_len.insert(room, len);
            if let Ok(membership) = self.store.load(&room)
                && let Some(m) = self.machines.get_mut(&room)
            {
                m.add_records(now, membership.records().to_vec());
            }
        }
        // A room created (or joined) from another terminal.
        if self.options.rooms.is_none()
            && let Ok(all) = self.store.list()
        {
            for room in all {
                if !self.machines.contains_key(&room)
                    && let Ok(membership) = self.store.load(&room)
                {
                    let name = membership.name().to_owned();
                    self.run_room(membership);
                    self.emit(RoomHostEvent::Added {
                        room,
                        name,
                        from: None,
                    });
                }
            }
        }
    }

    fn emit(&self, event: RoomHostEvent) {
        if self.events.try_send(event).is_err() {
            tracing::warn!("room events are not being read; one was dropped");
        }
    }

    /// Executes what every machine asked for.
    async fn pump(&mut self) {
        let rooms: Vec<RoomId> = self.machines.keys().copied().collect();
        for room in rooms {
            let mut transmit = Vec::new();
            let mut closes = Vec::new();
            let mut dials = Vec::new();
            let mut events = Vec::new();
            let (records, dirty) = {
                let Some(m) = self.machines.get_mut(&room) else {
                    continue;
                };
                while let Some(t) = m.poll_transmit() {
                    transmit.push(t);
                }
                while let Some(c) = m.poll_close() {
                    closes.push(c);
                }
                while let Some(d) = m.poll_dial() {
                    if let Some(member) = m.membership().member(&d) {
                        dials.push((d, member.key));
                    }
                }
                while let Some(e) = m.poll_event() {
                    events.push(e);
                }
                (m.take_new_records(), m.take_dirty())
            };
            for (stream, frame) in transmit {
                let full = self
                    .streams
                    .get(&stream)
                    .is_some_and(|s| s.out.try_send(frame).is_err());
                if full {
                    tracing::info!(
                        stream,
                        "a member is not reading its room stream; closing it"
                    );
                    self.streams.remove(&stream);
                    if let Some(m) = self.machines.get_mut(&room) {
                        m.handle_stream_closed(Instant::now(), stream);
                    }
                }
            }
            for stream in closes {
                // Dropping the sender lets the writer finish the stream after what is queued.
                self.streams.remove(&stream);
            }
            for (peer, key) in dials {
                let peers = self.peers.clone();
                let inputs = self.inputs_tx.clone();
                tokio::spawn(async move {
                    let opened = match peers.link(peer, key).await {
                        Ok(link) => link.open(StreamKind::Room).await.ok(),
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "room dial failed");
                            None
                        }
                    };
                    let input = match opened {
                        Some(stream) => Input::Opened(room, peer, stream),
                        None => Input::DialFailed(room, peer),
                    };
                    let _ = inputs.send(input).await;
                });
            }
            if !records.is_empty() {
                if let Err(e) = self.store.append(&room, &records) {
                    tracing::warn!(error = %e, "cannot store room records");
                }
                self.records_len.insert(room, self.store.records_len(&room));
            }
            if dirty && self.last_save.elapsed() >= Duration::from_secs(1) {
                self.save_all();
            }
            for event in events {
                self.emit(RoomHostEvent::Room { room, event });
            }
        }
    }

    fn save_all(&mut self) {
        self.last_save = Instant::now();
        for (room, m) in &self.machines {
            if let Err(e) = self.store.save_delivered(room, m.delivered()) {
                tracing::warn!(error = %e, "cannot save room state");
            }
        }
    }

    async fn stop(&mut self) {
        for m in self.machines.values_mut() {
            m.quit("offline");
        }
        self.pump().await;
        self.save_all();
        self.streams.clear();
        // Give the writers a moment to put the goodbyes on the wire.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn refuse(link_stream: LinkStream, why: &str) {
    let (mut send, _recv) = link_stream.into_split();
    let _ = send
        .write_all(&Frame::Refuse(why.to_owned()).encode())
        .await;
    let _ = send.finish();
}

fn info_of(m: &RoomMachine) -> RoomInfo {
    let here = m.here();
    let reported: std::collections::HashSet<Uuid> = m.reported_here().into_iter().collect();
    let membership = m.membership();
    RoomInfo {
        room: m.room(),
        name: membership.name().to_owned(),
        member: m.is_member(),
        members: membership
            .current()
            .map(|member| MemberInfo {
                uuid: member.uuid,
                alias: here
                    .get(&member.uuid)
                    .cloned()
                    .unwrap_or_else(|| member.alias.clone()),
                here: here.contains_key(&member.uuid),
                reported: reported.contains(&member.uuid),
            })
            .collect(),
    }
}

/// The pool policy for members of any room in `store`: the key their records give.
#[derive(Debug, Clone)]
pub struct MembersPolicy {
    store: RoomStore,
}

impl MembersPolicy {
    /// Looks members up in `store` (read on each request, so new rooms count at once).
    pub fn new(store: RoomStore) -> Self {
        Self { store }
    }

    /// The key `peer` has in any of our rooms where it is a current member.
    pub fn key_for(&self, peer: &Uuid) -> Option<VerifyingKey> {
        let rooms = self.store.list().ok()?;
        rooms.iter().find_map(|room| {
            let m = self.store.load(room).ok()?;
            m.member(peer).filter(|mm| mm.current).map(|mm| mm.key)
        })
    }
}
