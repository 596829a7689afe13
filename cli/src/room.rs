//! `chatr room …`: group chats over a mesh of peer links (`docs/ROOMS.md`).
//!
//! `create`, `invite` and `list` work offline on the home directory (an invitation is
//! a record signed with our key, appended to the room's store; a running `room join`
//! or `tui` picks it up and passes it on). `join` stays online in the room: typed lines
//! are messages, `/who`, `/invite CONTACT`, `/leave` and `/quit` are commands. `send`,
//! `who` and `leave` go online just long enough to do their one job.

use std::time::Duration;

use chatr_client::room::host::{AcceptInvites, RoomInfo};
use chatr_client::room::record::{Record, RecordBody};
use chatr_client::room::store::RoomStore;
use chatr_client::room::{Membership, RoomConfig, RoomEvent, RoomHostEvent, RoomId};
use clap::Subcommand;
use tokio::io::AsyncBufReadExt;
use uuid::Uuid;

use super::link::{ctrl_c, resolve_contact};
use super::node::{Node, start_node};
use super::{CliError, Globals};

#[derive(Debug, Subcommand)]
pub(crate) enum RoomCommand {
    /// Create a room; you are its first member
    Create {
        /// Its name
        name: String,
    },
    /// Invite a contact (signed with your key; it reaches them when you are both online)
    Invite {
        /// The room (name or id)
        room: String,
        /// The contact (alias or UUID)
        contact: String,
    },
    /// Be in the room: type to talk, /who, /invite CONTACT, /leave, /quit
    Join {
        /// The room (name or id); a room you were invited to but do not have yet is
        /// accepted by name when its invitation arrives
        room: String,
        /// Keep-alive interval in seconds (a member that crashes is noticed within it)
        #[arg(long, default_value_t = 10)]
        keepalive: u64,
    },
    /// Leave the room for good (the members are told; rejoining needs a new invitation)
    Leave {
        /// The room (name or id)
        room: String,
    },
    /// Show the members, and who is in the room now
    Who {
        /// The room (name or id)
        room: String,
        /// Seconds to wait for the members who are online
        #[arg(long, default_value_t = 5)]
        wait: u64,
    },
    /// Send one message and wait until the members who are online have it
    Send {
        /// The room (name or id)
        room: String,
        /// The message
        text: String,
        /// Seconds to wait for the members to confirm
        #[arg(long, default_value_t = 15)]
        wait: u64,
    },
    /// List your rooms
    List,
}

fn store(g: &Globals) -> RoomStore {
    RoomStore::new(g.home.dir())
}

fn time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What to call a member: our contact's alias, else the alias its inviter gave it.
pub(crate) fn member_name(g: &Globals, membership: &Membership, uuid: &Uuid) -> String {
    if let Ok(book) = g.home.contacts()
        && let Some(c) = book.by_uuid(uuid)
    {
        return c.alias.clone();
    }
    if g.home.identity().is_ok_and(|i| i.uuid() == *uuid) {
        return "you".to_owned();
    }
    match membership.member(uuid) {
        Some(m) if !m.alias.is_empty() => m.alias.clone(),
        _ => uuid.to_string().chars().take(8).collect(),
    }
}

pub(crate) async fn run(g: &Globals, cmd: RoomCommand) -> Result<(), CliError> {
    match cmd {
        RoomCommand::Create { name } => create(g, &name),
        RoomCommand::Invite { room, contact } => invite(g, &room, &contact),
        RoomCommand::List => list(g),
        RoomCommand::Join { room, keepalive } => join(g, &room, keepalive).await,
        RoomCommand::Leave { room } => leave(g, &room).await,
        RoomCommand::Who { room, wait } => who(g, &room, wait).await,
        RoomCommand::Send { room, text, wait } => send(g, &room, &text, wait).await,
    }
}

fn create(g: &Globals, name: &str) -> Result<(), CliError> {
    let name = name.trim();
    if name.is_empty() || name.len() > chatr_client::room::record::MAX_NAME {
        return Err(CliError::Usage(
            "a room name is 1 to 64 bytes long".to_owned(),
        ));
    }
    let me = g.home.identity()?;
    let genesis = Record::genesis(name, rand::random(), me.uuid(), me.signing_key());
    let room = genesis.room;
    store(g).append(&room, &[genesis])?;
    println!("created room {name} ({})", room.short());
    println!(
        "invite friends with `chatr room invite {name} <contact>`, then `chatr room join {name}`"
    );
    Ok(())
}

fn invite(g: &Globals, room: &str, contact: &str) -> Result<(), CliError> {
    let me = g.home.identity()?;
    let membership = store(g).find(room)?;
    if !membership.is_current(&me.uuid()) {
        return Err(CliError::Usage(format!(
            "you are not a member of {} any more; only members can invite",
            membership.name()
        )));
    }
    let peer = resolve_contact(g, contact)?;
    if membership.is_current(&peer.uuid) {
        println!("{} is already a member of {}", peer.name, membership.name());
        return Ok(());
    }
    let record = Record::sign(
        membership.room(),
        RecordBody::Invite {
            id: rand::random(),
            invitee: peer.uuid,
            key: peer.key.to_bytes(),
            alias: peer.name.clone(),
            time_ms: time_ms(),
        },
        me.uuid(),
        me.signing_key(),
    );
    store(g).append(&membership.room(), &[record])?;
    println!(
        "invited {} to {}; they get the invitation when you are both online (you in \
         `chatr room join {}` or `chatr tui`, they in `chatr room join {}` or `chatr tui`)",
        peer.name,
        membership.name(),
        membership.name(),
        membership.name()
    );
    Ok(())
}

fn list(g: &Globals) -> Result<(), CliError> {
    let store = store(g);
    let me = g.home.identity()?.uuid();
    let rooms = store.list()?;
    if rooms.is_empty() {
        eprintln!("no rooms yet; create one with `chatr room create <name>`");
    }
    for id in rooms {
        let Ok(m) = store.load(&id) else {
            continue;
        };
        let members = m.current().count();
        let state = if m.is_current(&me) { "" } else { " (you left)" };
        println!("{}\t{}\t{members} members{state}", m.name(), id.short());
    }
    Ok(())
}

/// The room by name, or `None` when only an invitation may bring it.
fn find_optional(g: &Globals, room: &str) -> Result<Option<Membership>, CliError> {
    match store(g).find(room) {
        Ok(m) => Ok(Some(m)),
        Err(chatr_client::room::store::StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn print_who(g: &Globals, membership: &Membership, info: Option<&RoomInfo>) {
    let me = g.home.identity().map(|i| i.uuid()).ok();
    for m in membership.current() {
        let state = if Some(m.uuid) == me {
            "you".to_owned()
        } else {
            match info.and_then(|i| i.members.iter().find(|x| x.uuid == m.uuid)) {
                Some(x) if x.here => "here".to_owned(),
                Some(x) if x.reported => "here (no direct session yet)".to_owned(),
                Some(_) => "not here".to_owned(),
                None => "unknown".to_owned(),
            }
        };
        println!(
            "{}\t{}\t{state}",
            member_name(g, membership, &m.uuid),
            m.uuid
        );
    }
}

/// Prints one room event; returns false when we are no longer in the room.
fn show(g: &Globals, store: &RoomStore, event: &RoomHostEvent) {
    match event {
        RoomHostEvent::Added { room, name, from } => {
            let by = from
                .and_then(|f| store.load(room).ok().map(|m| member_name(g, &m, &f)))
                .unwrap_or_else(|| "another terminal".to_owned());
            println!("* you are now in room {name} (invited; delivered by {by})");
        }
        RoomHostEvent::Room { room, event } => {
            let Ok(m) = store.load(room) else { return };
            let name = |u: &Uuid| member_name(g, &m, u);
            let tag = m.name();
            match event {
                RoomEvent::Message(d) => println!("[{tag}] {}: {}", name(&d.id.sender), d.text),
                RoomEvent::Joined { member, .. } => println!("[{tag}] * {} is here", name(member)),
                RoomEvent::Offline { member, reason } => {
                    println!("[{tag}] * {} went offline ({reason})", name(member));
                }
                RoomEvent::Lost { member } => {
                    println!(
                        "[{tag}] * lost {} (no answer within the keep-alive)",
                        name(member)
                    );
                }
                RoomEvent::Left { member } => println!("[{tag}] * {} left the room", name(member)),
                RoomEvent::Invited { member, by } => {
                    println!("[{tag}] * {} invited {}", name(by), name(member));
                }
                RoomEvent::MessagesLost { sender, count } => println!(
                    "[{tag}] * {count} message(s) from {} were lost (nobody kept them)",
                    name(sender)
                ),
                _ => {}
            }
        }
        _ => {}
    }
}

async fn join(g: &Globals, room: &str, keepalive: u64) -> Result<(), CliError> {
    let known = find_optional(g, room)?;
    let (rooms, accept) = match &known {
        Some(m) => (Some(vec![m.room()]), AcceptInvites::None),
        None => {
            eprintln!(
                "you have no room named {room:?} yet; waiting for a member to bring its \
                 invitation (Ctrl-C to stop)"
            );
            (Some(Vec::new()), AcceptInvites::Named(room.to_owned()))
        }
    };
    let config = RoomConfig {
        keepalive: Duration::from_secs(keepalive.max(1)),
        ..RoomConfig::default()
    };
    let mut node = start_node(g, rooms, accept, config).await?;
    let mut current: Option<RoomId> = known.as_ref().map(Membership::room);
    if let Some(m) = &known {
        eprintln!(
            "in room {} with {} other member(s); type to talk, /who, /invite CONTACT, /leave, /quit",
            m.name(),
            m.current().count().saturating_sub(1)
        );
    }
    let store = store(g);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let result = loop {
        tokio::select! {
            _ = ctrl_c() => break Ok(()),
            event = node.events.recv() => match event {
                Some(event) => {
                    if let RoomHostEvent::Added { room, .. } = &event {
                        current = Some(*room);
                    }
                    show(g, &store, &event);
                }
                None => break Ok(()),
            },
            // Two-party streams are not for this command.
            Some((_, mut stream)) = node.others.recv() => {
                stream.abort(chatr_client::link::CloseCode::Refused);
            }
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(line)) => match line_command(g, &node, current, &line).await {
                    Ok(true) => {}
                    Ok(false) => break Ok(()),
                    Err(e) => eprintln!("{e}"),
                },
                _ => stdin_open = false,
            },
        }
    };
    node.stop().await;
    result
}

/// Runs one typed line; false to stop.
async fn line_command(
    g: &Globals,
    node: &Node,
    room: Option<RoomId>,
    line: &str,
) -> Result<bool, CliError> {
    let line = line.trim_end();
    let Some(room) = room else {
        eprintln!("(not in the room yet: no invitation has arrived)");
        return Ok(true);
    };
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    match cmd {
        "" => {}
        "/quit" | "/exit" => return Ok(false),
        "/who" => {
            let membership = store(g).load(&room)?;
            let info = node.host.info(room).await?;
            print_who(g, &membership, info.as_ref());
        }
        "/invite" => {
            let peer = resolve_contact(g, rest.trim())?;
            node.host
                .invite(room, peer.uuid, peer.key, peer.name.clone())
                .await?;
            println!("* invited {}", peer.name);
        }
        "/leave" => {
            node.host.leave(room).await?;
            println!("* you left the room");
            // Let the leave reach the members before the links close.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(false);
        }
        _ => {
            node.host.send(room, line.to_owned()).await?;
        }
    }
    Ok(true)
}

/// Waits until we have sessions with the members who are online, or `wait`.
async fn settle(node: &Node, room: RoomId, wait: Duration) -> Option<RoomInfo> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut last_here: Option<usize> = None;
    let mut stable_since = tokio::time::Instant::now();
    loop {
        let info = node.host.info(room).await.ok().flatten();
        let here = info
            .as_ref()
            .map_or(0, |i| i.members.iter().filter(|m| m.here).count());
        // Every member but us is here (we are listed too, never "here").
        let everyone = info
            .as_ref()
            .is_some_and(|i| i.members.iter().filter(|m| !m.here).count() <= 1);
        if last_here != Some(here) {
            stable_since = tokio::time::Instant::now();
            last_here = Some(here);
        }
        // Everyone is here, or nothing changed for a while after somebody came.
        if everyone
            || (here > 0 && stable_since.elapsed() > Duration::from_millis(1500))
            || tokio::time::Instant::now() >= deadline
        {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn who(g: &Globals, room: &str, wait: u64) -> Result<(), CliError> {
    let membership = store(g).find(room)?;
    let node = match start_node(
        g,
        Some(vec![membership.room()]),
        AcceptInvites::None,
        RoomConfig::default(),
    )
    .await
    {
        Ok(node) => node,
        Err(e) => {
            eprintln!("(cannot go online to see who is here: {e})");
            print_who(g, &membership, None);
            return Ok(());
        }
    };
    let info = settle(&node, membership.room(), Duration::from_secs(wait)).await;
    print_who(g, &membership, info.as_ref());
    node.stop().await;
    Ok(())
}

async fn send(g: &Globals, room: &str, text: &str, wait: u64) -> Result<(), CliError> {
    let membership = store(g).find(room)?;
    let room = membership.room();
    let node = start_node(
        g,
        Some(vec![room]),
        AcceptInvites::None,
        RoomConfig::default(),
    )
    .await?;
    let result = async {
        let wait = Duration::from_secs(wait);
        let info = settle(&node, room, wait.min(Duration::from_secs(8))).await;
        let here: Vec<Uuid> = info
            .map(|i| {
                i.members
                    .into_iter()
                    .filter(|m| m.here)
                    .map(|m| m.uuid)
                    .collect()
            })
            .unwrap_or_default();
        let id = node.host.send(room, text.to_owned()).await?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut acked = Vec::new();
        while !here.is_empty() && tokio::time::Instant::now() < deadline {
            node.host.request_acks(room).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            acked = node.host.acked(room, id).await?;
            if here.iter().all(|m| acked.contains(m)) {
                break;
            }
        }
        let absent: Vec<String> = membership
            .current()
            .filter(|m| {
                !acked.contains(&m.uuid) && Some(m.uuid) != g.home.identity().ok().map(|i| i.uuid())
            })
            .map(|m| member_name(g, &membership, &m.uuid))
            .collect();
        println!(
            "delivered to {} member(s){}",
            acked.len(),
            if absent.is_empty() {
                String::new()
            } else {
                format!("; not to {} (offline, or not reached)", absent.join(", "))
            }
        );
        if acked.is_empty() {
            return Err(CliError::Undelivered(
                "nobody in the room got the message (nobody online?); it was not kept".into(),
            ));
        }
        Ok(())
    }
    .await;
    node.stop().await;
    result
}

async fn leave(g: &Globals, room: &str) -> Result<(), CliError> {
    let membership = store(g).find(room)?;
    let me = g.home.identity()?;
    let Some(ends) = membership.membership_of(&me.uuid()) else {
        return Err(CliError::Usage(format!(
            "you are not a member of {}",
            membership.name()
        )));
    };
    let room = membership.room();
    // Online: the members who are here get the signed leave at once (and pass it on).
    match start_node(
        g,
        Some(vec![room]),
        AcceptInvites::None,
        RoomConfig::default(),
    )
    .await
    {
        Ok(node) => {
            settle(&node, room, Duration::from_secs(5)).await;
            let result = node.host.leave(room).await;
            // Let the record and the goodbyes reach the wire.
            tokio::time::sleep(Duration::from_millis(500)).await;
            node.stop().await;
            result?;
        }
        Err(e) => {
            // Offline (or another chatr holds the login): the record goes into the store,
            // and whichever of our hosts meets a member next passes it on.
            eprintln!("(not online: {e}; the members learn it when you next meet one)");
            let record = Record::sign(
                room,
                RecordBody::Leave {
                    ends,
                    time_ms: time_ms(),
                },
                me.uuid(),
                me.signing_key(),
            );
            store(g).append(&room, &[record])?;
        }
    }
    println!("you left {}", membership.name());
    Ok(())
}
