//! `chatr tui`: the terminal UI for the everyday user.
//!
//! Built on ratatui (the maintained successor of tui-rs; immediate-mode drawing fits a
//! state that changes from many sources) with its crossterm backend. The driver here
//! owns the node (client, presence, link pool, room host), turns every source into
//! changes of the pure [`app::App`] (keys, presence, room events, chat packets, a
//! half-second tick that refreshes link paths and room counts), and redraws.
//!
//! The TUI runs every room you are a member of and accepts invitations as they arrive;
//! two-party chats use the same links as the rooms.

mod app;
mod view;

use std::collections::HashMap;
use std::time::Duration;

use chatr_client::link::StreamKind;
use chatr_client::link::chat::{ChatPacket, ChatProfile, ChatSession, ChatWriter, Status};
use chatr_client::room::host::AcceptInvites;
use chatr_client::room::record::Record;
use chatr_client::room::store::RoomStore;
use chatr_client::room::{RoomConfig, RoomEvent, RoomHostEvent};
use chatr_client::session::SessionStatus;
use ratatui::crossterm::event::{Event, KeyEventKind};
use tokio::sync::mpsc;
use uuid::Uuid;

use self::app::{Action, App, ContactRow, Conv, RoomRow};
use super::link::describe_presence;
use super::node::{Node, start_node};
use super::room::member_name;
use super::{CliError, Globals};

/// Arguments of `chatr tui`.
#[derive(Debug, clap::Args)]
pub(crate) struct TuiArgs {
    /// Status text your contacts see
    #[arg(long, default_value = "")]
    status_message: String,
}

/// What chat tasks report.
enum ChatNews {
    Open(Uuid, String, ChatWriter),
    Packet(Uuid, ChatPacket),
    Closed(Uuid),
    Failed(Uuid, String),
}

struct Driver<'g> {
    g: &'g Globals,
    node: Node,
    app: App,
    chats: HashMap<Uuid, ChatWriter>,
    /// Lines typed for a contact before its chat was open.
    pending: HashMap<Uuid, Vec<String>>,
    news_tx: mpsc::Sender<ChatNews>,
    profile: ChatProfile,
}

pub(crate) async fn run(g: &Globals, args: TuiArgs) -> Result<(), CliError> {
    let node = start_node(g, None, AcceptInvites::All, RoomConfig::default()).await?;
    if !args.status_message.is_empty() {
        let wanted = super::link::presence_wanted(
            g,
            chatr_proto::PresenceStatus::Available,
            &args.status_message,
        )?;
        node.client.set_presence(wanted).await?;
    }
    let (news_tx, mut news) = mpsc::channel(256);
    let alias = g.home.config()?.display_alias();
    let mut d = Driver {
        g,
        node,
        app: App {
            me: alias.clone(),
            ..App::default()
        },
        chats: HashMap::new(),
        pending: HashMap::new(),
        news_tx,
        profile: ChatProfile {
            alias,
            status: Status::Available,
            status_message: args.status_message,
        },
    };
    d.refresh().await;

    // Keys come from a thread of their own: crossterm's read blocks.
    let (keys_tx, mut keys) = mpsc::channel(64);
    std::thread::spawn(move || {
        while let Ok(event) = ratatui::crossterm::event::read() {
            if keys_tx.blocking_send(event).is_err() {
                break;
            }
        }
    });
    let mut terminal = ratatui::try_init()?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut presence = d.node.client.presence();
    let result = loop {
        if let Err(e) = terminal.draw(|f| view::draw(f, &d.app)) {
            break Err(CliError::Io(e));
        }
        tokio::select! {
            _ = super::link::ctrl_c() => break Ok(()),
            Some(event) = keys.recv() => match event {
                Event::Key(key) if key.kind == KeyEventKind::Press => {
                    let mut quit = false;
                    for action in d.app.key(key) {
                        if action == Action::Quit {
                            quit = true;
                        } else {
                            d.act(action).await;
                        }
                    }
                    if quit {
                        break Ok(());
                    }
                }
                _ => {}
            },
            Some(event) = d.node.events.recv() => d.room_event(event),
            Some((peer, stream)) = d.node.others.recv() => d.incoming(peer, stream),
            Some(n) = news.recv() => d.chat_news(n).await,
            Ok(()) = presence.changed() => d.refresh().await,
            _ = tick.tick() => d.refresh().await,
        }
    };
    ratatui::restore();
    for (_, mut w) in d.chats.drain() {
        let _ = tokio::time::timeout(Duration::from_secs(1), w.close()).await;
    }
    d.node.stop().await;
    result
}

impl Driver<'_> {
    fn name_of(&self, uuid: &Uuid) -> String {
        self.g
            .home
            .contacts()
            .ok()
            .and_then(|b| b.by_uuid(uuid).map(|c| c.alias.clone()))
            .unwrap_or_else(|| uuid.to_string().chars().take(8).collect())
    }

    /// Contacts and their presence, rooms and who is here, link paths, the session.
    async fn refresh(&mut self) {
        let book = self.g.home.contacts().unwrap_or_default();
        let view = self.node.client.presence().borrow().clone();
        self.app.contacts = book
            .iter()
            .map(|c| ContactRow {
                uuid: c.uuid,
                alias: c.alias.clone(),
                presence: if c.presence {
                    describe_presence(&view, &c.uuid)
                        .trim_start_matches("online (")
                        .trim_end_matches(')')
                        .to_owned()
                } else {
                    "presence not shared".to_owned()
                },
                online: view.online.contains_key(&c.uuid),
            })
            .collect();
        if let Ok(rooms) = self.node.host.list().await {
            self.app.rooms = rooms
                .into_iter()
                .filter(|r| r.member)
                .map(|r| RoomRow {
                    room: r.room,
                    name: r.name,
                    here: r.members.iter().filter(|m| m.here).count(),
                    members: r.members.len().saturating_sub(1),
                })
                .collect();
        }
        self.app.paths = self
            .node
            .peers
            .links()
            .into_iter()
            .map(|(uuid, link)| {
                let status = link.paths().map(|p| p.current());
                let text = match status.as_ref().and_then(|s| s.class) {
                    Some(class) if class.is_relayed() => {
                        let why = status
                            .as_ref()
                            .and_then(|s| s.reason.as_ref())
                            .map(|r| format!(" ({})", r.as_str()))
                            .unwrap_or_default();
                        format!("relayed{why}: {}", class.describe())
                    }
                    Some(class) => class.describe().to_owned(),
                    None => "setting up".to_owned(),
                };
                let rtt = link.rtt().as_millis();
                (uuid, format!("{text}, {rtt} ms"))
            })
            .collect();
        self.app.session = match self.node.client.session_status() {
            SessionStatus::Online(_) => "online".to_owned(),
            SessionStatus::Connecting { .. } => "connecting…".to_owned(),
            SessionStatus::Offline { reason, .. } => format!("offline: {reason}"),
            SessionStatus::Stopped(_) => "stopped".to_owned(),
            _ => "…".to_owned(),
        };
        if self.app.selected >= self.app.contacts.len() + self.app.rooms.len() {
            self.app.selected = 0;
        }
    }

    fn room_event(&mut self, event: RoomHostEvent) {
        let store = RoomStore::new(self.g.home.dir());
        match event {
            RoomHostEvent::Added { name, .. } => {
                self.app.notice(format!("you are now in room {name}"));
            }
            RoomHostEvent::Room { room, event } => {
                let Ok(m) = store.load(&room) else { return };
                let name = |u: &Uuid| member_name(self.g, &m, u);
                let line = match event {
                    RoomEvent::Message(d) => format!("{}: {}", name(&d.id.sender), d.text),
                    RoomEvent::Joined { member, .. } => format!("* {} is here", name(&member)),
                    RoomEvent::Offline { member, .. } => {
                        format!("* {} went offline", name(&member))
                    }
                    RoomEvent::Lost { member } => format!("* lost {} (no answer)", name(&member)),
                    RoomEvent::Left { member } => format!("* {} left the room", name(&member)),
                    RoomEvent::Invited { member, by } => {
                        format!("* {} invited {}", name(&by), name(&member))
                    }
                    RoomEvent::MessagesLost { sender, count } => {
                        format!("* {count} message(s) from {} were lost", name(&sender))
                    }
                    _ => return,
                };
                self.app.push(Conv::Room(room), line);
            }
            _ => {}
        }
    }

    fn incoming(&mut self, peer: Uuid, stream: chatr_client::link::LinkStream) {
        if stream.kind() != StreamKind::Chat {
            let mut stream = stream;
            stream.abort(chatr_client::link::CloseCode::Refused);
            return;
        }
        let news = self.news_tx.clone();
        let profile = self.profile.clone();
        tokio::spawn(serve_chat(peer, stream, profile, news));
    }

    async fn chat_news(&mut self, news: ChatNews) {
        match news {
            ChatNews::Open(peer, alias, mut writer) => {
                let name = self.name_of(&peer);
                self.app.push(
                    Conv::Contact(peer),
                    format!("* chatting with {name} (calls themselves {alias})"),
                );
                for line in self.pending.remove(&peer).unwrap_or_default() {
                    if writer.send_message(&line).await.is_ok() {
                        self.app.push(Conv::Contact(peer), format!("you: {line}"));
                    }
                }
                self.chats.insert(peer, writer);
            }
            ChatNews::Packet(peer, p) => {
                let name = self.name_of(&peer);
                if let Some(m) = p.message {
                    self.app.push(Conv::Contact(peer), format!("{name}: {m}"));
                }
            }
            ChatNews::Closed(peer) => {
                self.chats.remove(&peer);
                let name = self.name_of(&peer);
                self.app
                    .push(Conv::Contact(peer), format!("* {name} closed the chat"));
            }
            ChatNews::Failed(peer, why) => {
                self.pending.remove(&peer);
                self.app.push(
                    Conv::Contact(peer),
                    format!("! could not reach them: {why}"),
                );
            }
        }
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::SendChat(peer, text) => {
                if let Some(w) = self.chats.get_mut(&peer) {
                    match w.send_message(&text).await {
                        Ok(()) => self.app.push(Conv::Contact(peer), format!("you: {text}")),
                        Err(e) => self
                            .app
                            .push(Conv::Contact(peer), format!("! not sent: {e}")),
                    }
                    return;
                }
                let first = !self.pending.contains_key(&peer);
                self.pending.entry(peer).or_default().push(text);
                if first {
                    self.open_chat(peer);
                }
            }
            Action::SendRoom(room, text) => {
                if let Err(e) = self.node.host.send(room, text.clone()).await {
                    self.app.push(Conv::Room(room), format!("! not sent: {e}"));
                } else {
                    self.app.push(Conv::Room(room), format!("you: {text}"));
                }
            }
            Action::Invite(room, contact) => match super::link::resolve_contact(self.g, &contact) {
                Ok(peer) => match self
                    .node
                    .host
                    .invite(room, peer.uuid, peer.key, peer.name.clone())
                    .await
                {
                    Ok(()) => self
                        .app
                        .push(Conv::Room(room), format!("* you invited {}", peer.name)),
                    Err(e) => self.app.push(Conv::Room(room), format!("! {e}")),
                },
                Err(e) => self.app.push(Conv::Room(room), format!("! {e}")),
            },
            Action::Leave(room) => match self.node.host.leave(room).await {
                Ok(()) => self.app.notice("you left the room".to_owned()),
                Err(e) => self.app.notice(format!("{e}")),
            },
            Action::Create(name) => match self.create(&name) {
                Ok(()) => self.app.notice(format!(
                    "created room {name}; choose it and /invite your contacts"
                )),
                Err(e) => self.app.notice(format!("{e}")),
            },
            Action::Quit => {}
        }
    }

    /// A new room goes into the store; the host picks it up within two seconds.
    fn create(&self, name: &str) -> Result<(), CliError> {
        let me = self.g.home.identity()?;
        let genesis = Record::genesis(name, rand::random(), me.uuid(), me.signing_key());
        RoomStore::new(self.g.home.dir()).append(&genesis.room.clone(), &[genesis])?;
        Ok(())
    }

    fn open_chat(&mut self, peer: Uuid) {
        let Ok(contact) = super::link::resolve_contact(self.g, &peer.to_string()) else {
            return;
        };
        let peers = self.node.peers.clone();
        let news = self.news_tx.clone();
        let profile = self.profile.clone();
        self.app.push(
            Conv::Contact(peer),
            format!("* linking with {}…", contact.name),
        );
        tokio::spawn(async move {
            let stream = match peers.link(peer, contact.key).await {
                Ok(link) => link.open(StreamKind::Chat).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match stream {
                Ok(stream) => serve_chat(peer, stream, profile, news).await,
                Err(why) => {
                    let _ = news.send(ChatNews::Failed(peer, why)).await;
                }
            }
        });
    }
}

/// Runs one chat stream: handshake, then packets to the driver until it ends.
async fn serve_chat(
    peer: Uuid,
    stream: chatr_client::link::LinkStream,
    profile: ChatProfile,
    news: mpsc::Sender<ChatNews>,
) {
    let session = match tokio::time::timeout(
        Duration::from_secs(15),
        ChatSession::start(stream, &profile),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = news.send(ChatNews::Failed(peer, e.to_string())).await;
            return;
        }
        Err(_) => {
            let _ = news
                .send(ChatNews::Failed(peer, "no chat handshake".into()))
                .await;
            return;
        }
    };
    let alias = session.peer_handshake().alias.clone().unwrap_or_default();
    let (writer, mut reader) = session.split();
    if news
        .send(ChatNews::Open(peer, alias, writer))
        .await
        .is_err()
    {
        return;
    }
    while let Ok(Some(p)) = reader.recv().await {
        let bye = p.is_goodbye();
        if news.send(ChatNews::Packet(peer, p)).await.is_err() || bye {
            break;
        }
    }
    let _ = news.send(ChatNews::Closed(peer)).await;
}
