//! `chat` and `listen`: Enclave-style line chat over peer links.
//!
//! Typed lines are messages; `/away [text]`, `/busy [text]`, `/back` change our
//! status, `/quit` (or end of input, or Ctrl-C) says goodbye (`status: 0`).
//! Incoming messages print as `alias: text`, status changes as `* alias …`.
//! `listen` serves many links at once: a line goes to every open chat, or to
//! one with `@alias text`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chatr_client::link::chat::{
    ChatPacket, ChatProfile, ChatReader, ChatSession, ChatWriter, Status,
};
use chatr_client::link::transfer::receive_file;
use chatr_client::link::{CloseCode, PeerLink, StreamKind};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Mutex, mpsc};
use uuid::Uuid;

use super::link::{Peer, Policy, accept_one, ctrl_c, request, resolve_peer, start_client};
use super::{CliError, Globals};

/// Arguments of `chatr chat`.
#[derive(Debug, clap::Args)]
pub(crate) struct ChatArgs {
    /// The peer: a contact's alias or UUID
    peer: String,
    /// Status text announced in the handshake
    #[arg(long, default_value = "")]
    status_message: String,
}

/// Arguments of `chatr listen`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListenArgs {
    /// Also accept peers that are not contacts (their key comes from the registry)
    #[arg(long)]
    accept_any: bool,
    /// Accept files peers send into this directory (files are refused without it)
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Status text announced in the handshake
    #[arg(long, default_value = "")]
    status_message: String,
}

/// How long a peer has to send its handshake.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(15);

fn profile(g: &Globals, status_message: &str) -> Result<ChatProfile, CliError> {
    Ok(ChatProfile {
        alias: g.home.config()?.display_alias(),
        status: Status::Available,
        status_message: status_message.to_string(),
    })
}

/// Reads stdin lines into a channel (ends with the input).
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// What a typed line means.
#[derive(Debug, PartialEq, Eq)]
enum Input {
    Message(String),
    Status(Status, Option<String>),
    Quit,
    Nothing,
}

fn parse_input(line: &str) -> Input {
    let line = line.trim_end_matches(['\r', '\n']);
    let (cmd, rest) = match line.split_once(' ') {
        Some((c, r)) => (c, Some(r.trim().to_string()).filter(|r| !r.is_empty())),
        None => (line, None),
    };
    match cmd {
        "" => Input::Nothing,
        "/quit" | "/exit" => Input::Quit,
        "/away" => Input::Status(Status::Away, rest),
        "/busy" => Input::Status(Status::Busy, rest),
        "/back" => Input::Status(Status::Available, rest),
        _ => Input::Message(line.to_string()),
    }
}

async fn apply(writer: &mut ChatWriter, input: Input) -> Result<bool, CliError> {
    match input {
        Input::Message(text) => writer.send_message(&text).await.map_err(chat_err)?,
        Input::Status(status, text) => writer.set_status(status, text).await.map_err(chat_err)?,
        Input::Quit => return Ok(false),
        Input::Nothing => {}
    }
    Ok(true)
}

fn chat_err(e: chatr_client::link::chat::ChatError) -> CliError {
    CliError::Io(std::io::Error::other(e.to_string()))
}

/// Prints a packet from `name`; returns false when it says goodbye.
fn show(name: &str, packet: &ChatPacket) -> bool {
    if let Some(alias) = &packet.alias
        && packet.message.is_none()
        && packet.status.is_none()
    {
        println!("* {name} now calls themselves {alias}");
    }
    if let Some(status) = packet.status {
        let text = packet
            .status_message
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| format!(": {t}"))
            .unwrap_or_default();
        match status {
            Status::Offline => {
                println!("* {name} left");
                return false;
            }
            Status::Available => println!("* {name} is available{text}"),
            Status::Away => println!("* {name} is away{text}"),
            Status::Busy => println!("* {name} is busy{text}"),
        }
    }
    if let Some(message) = &packet.message {
        println!("{name}: {message}");
    }
    true
}

fn greet(name: &str, hs: &ChatPacket) {
    let alias = hs.alias.as_deref().unwrap_or("?");
    let status = hs
        .status_message
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|t| format!(" — {t}"))
        .unwrap_or_default();
    println!("* chatting with {name} (calls themselves {alias}){status}");
}

pub(crate) async fn chat(g: &Globals, args: ChatArgs) -> Result<(), CliError> {
    let me = profile(g, &args.status_message)?;
    let peer = resolve_peer(g, &args.peer).await?;
    let client = start_client(g).await?;
    let result = async {
        let link = request(g, &client, &peer).await?;
        let stream = link.open(StreamKind::Chat).await?;
        let session = tokio::time::timeout(HANDSHAKE_WAIT, ChatSession::start(stream, &me))
            .await
            .map_err(|_| CliError::Usage(format!("{} never sent its chat handshake", peer.name)))?
            .map_err(chat_err)?;
        greet(&peer.name, session.peer_handshake());
        let peer_gone = session.peer_handshake().is_goodbye();
        let (mut writer, mut reader) = session.split();
        if !peer_gone {
            converse(&peer.name, &mut writer, &mut reader).await?;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), writer.close()).await;
        link.close(CloseCode::Normal, "chat over");
        Ok(())
    }
    .await;
    client.shutdown().await;
    result
}

/// Runs one chat until either side leaves.
async fn converse(
    name: &str,
    writer: &mut ChatWriter,
    reader: &mut ChatReader,
) -> Result<(), CliError> {
    let mut lines = stdin_lines();
    loop {
        tokio::select! {
            _ = ctrl_c() => return Ok(()),
            line = lines.recv() => match line {
                Some(line) => if !apply(writer, parse_input(&line)).await? { return Ok(()) },
                None => return Ok(()),
            },
            packet = reader.recv() => match packet.map_err(chat_err)? {
                Some(p) => if !show(name, &p) { return Ok(()) },
                None => { println!("* {name} closed the chat"); return Ok(()) }
            },
        }
    }
}

type Writers = Arc<Mutex<HashMap<Uuid, (String, ChatWriter)>>>;

pub(crate) async fn listen(g: &Globals, args: ListenArgs) -> Result<(), CliError> {
    let me = profile(g, &args.status_message)?;
    let policy = if args.accept_any {
        Policy::Anyone
    } else {
        Policy::Contacts
    };
    let client = start_client(g).await?;
    client
        .set_presence(super::link::presence_wanted(
            g,
            chatr_proto::PresenceStatus::Available,
            &args.status_message,
        )?)
        .await?;
    let presence_task = tokio::spawn(print_presence(g.clone(), client.clone()));
    eprintln!(
        "online as {} ({}); waiting for link requests ({}), Ctrl-C to stop",
        me.alias,
        client.uuid(),
        if args.accept_any {
            "from anyone"
        } else {
            "from contacts"
        }
    );
    let writers: Writers = Arc::default();
    let mut links: Vec<PeerLink> = Vec::new();
    // Accept in a task of its own: a link being set up must not be cancelled
    // because a line was typed meanwhile.
    let (linked_tx, mut linked) = mpsc::channel(4);
    let acceptor = {
        let (g, client) = (g.clone(), client.clone());
        tokio::spawn(async move {
            loop {
                let r = accept_one(&g, &client, &policy, false).await;
                let stop = r.is_err();
                if linked_tx.send(r).await.is_err() || stop {
                    break;
                }
            }
        })
    };
    let mut lines = stdin_lines();
    let mut stdin_open = true;
    let mut result = Ok(());
    loop {
        tokio::select! {
            _ = ctrl_c() => break,
            r = linked.recv() => match r {
                Some(Ok((link, peer))) => {
                    links.push(link.clone());
                    tokio::spawn(serve_link(link, peer, me.clone(), writers.clone(), args.dir.clone()));
                }
                Some(Err(CliError::Interrupted)) | None => break,
                Some(Err(e)) => {
                    result = Err(e);
                    break;
                }
            },
            line = lines.recv(), if stdin_open => match line {
                Some(line) => broadcast(&writers, parse_input(&line)).await,
                // Without input (a daemon) keep serving.
                None => stdin_open = false,
            },
        }
    }
    acceptor.abort();
    presence_task.abort();
    let mut all = writers.lock().await;
    for (_, (_, writer)) in all.iter_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(2), writer.close()).await;
    }
    drop(all);
    for link in links {
        link.close(CloseCode::Normal, "listener stopping");
    }
    client.shutdown().await;
    result
}

/// Prints contacts as they come online, change status and go offline.
async fn print_presence(g: Globals, client: chatr_client::Client) {
    let mut rx = client.presence();
    let mut before = rx.borrow_and_update().clone();
    while rx.changed().await.is_ok() {
        let now = rx.borrow_and_update().clone();
        let book = g.home.contacts().unwrap_or_default();
        let name = |uuid: &Uuid| {
            book.by_uuid(uuid)
                .map_or_else(|| uuid.to_string(), |c| c.alias.clone())
        };
        for line in presence_lines(&before, &now, &name) {
            println!("{line}");
        }
        before = now;
    }
}

/// What `listen` prints for a change of presence.
fn presence_lines(
    before: &chatr_client::PresenceView,
    now: &chatr_client::PresenceView,
    name: &dyn Fn(&Uuid) -> String,
) -> Vec<String> {
    let mut out = Vec::new();
    if now.synced && !before.synced && now.online.is_empty() {
        out.push("* none of your contacts is online".to_owned());
    }
    for (uuid, old, new) in now.changes_since(before) {
        let who = name(&uuid);
        let line = match (old, new) {
            (_, Some(p)) => {
                let text = if p.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", p.message)
                };
                let verb = if old.is_some() {
                    "is now"
                } else {
                    "is online,"
                };
                format!("* {who} {verb} {}{text}", p.status)
            }
            (_, None) => format!("* {who} went offline"),
        };
        out.push(line);
    }
    out
}

/// Sends a typed line to every chat, or `@alias text` to one.
async fn broadcast(writers: &Writers, input: Input) {
    let mut all = writers.lock().await;
    let (target, input) = match input {
        Input::Message(text) if text.starts_with('@') => {
            let (to, rest) = text.split_once(' ').unwrap_or((&text, ""));
            (
                Some(to.trim_start_matches('@').to_string()),
                Input::Message(rest.to_string()),
            )
        }
        Input::Quit => {
            eprintln!("(press Ctrl-C to stop listening)");
            return;
        }
        other => (None, other),
    };
    if all.is_empty() {
        eprintln!("(nobody is connected yet)");
    }
    for (_, (name, writer)) in all.iter_mut() {
        if target.as_ref().is_some_and(|t| t != name) {
            continue;
        }
        let copy = match &input {
            Input::Message(m) => Input::Message(m.clone()),
            Input::Status(s, t) => Input::Status(*s, t.clone()),
            Input::Quit => Input::Quit,
            Input::Nothing => Input::Nothing,
        };
        if let Err(e) = apply(writer, copy).await {
            eprintln!("cannot send to {name}: {e}");
        }
    }
}

/// Serves the streams of one accepted link until it closes.
async fn serve_link(
    link: PeerLink,
    peer: Peer,
    me: ChatProfile,
    writers: Writers,
    dir: Option<PathBuf>,
) {
    loop {
        let stream = match link.accept_stream().await {
            Ok(s) => s,
            Err(_) => break,
        };
        match stream.kind() {
            StreamKind::Chat => {
                let Ok(Ok(session)) =
                    tokio::time::timeout(HANDSHAKE_WAIT, ChatSession::start(stream, &me)).await
                else {
                    eprintln!("{}: chat handshake failed", peer.name);
                    continue;
                };
                greet(&peer.name, session.peer_handshake());
                let (writer, mut reader) = session.split();
                writers
                    .lock()
                    .await
                    .insert(peer.uuid, (peer.name.clone(), writer));
                let writers = writers.clone();
                let name = peer.name.clone();
                let uuid = peer.uuid;
                tokio::spawn(async move {
                    while let Ok(Some(packet)) = reader.recv().await {
                        if !show(&name, &packet) {
                            break;
                        }
                    }
                    if let Some((_, mut w)) = writers.lock().await.remove(&uuid) {
                        let _ = tokio::time::timeout(Duration::from_secs(2), w.close()).await;
                    }
                });
            }
            StreamKind::File => match &dir {
                Some(dir) => match receive_file(stream, dir).await {
                    Ok(f) => println!(
                        "* received {} ({} bytes) from {}",
                        f.path.display(),
                        f.size,
                        peer.name
                    ),
                    Err(e) => eprintln!("receiving a file from {} failed: {e}", peer.name),
                },
                None => {
                    let mut stream = stream;
                    stream.abort(CloseCode::Refused);
                    eprintln!(
                        "refused a file from {} (start listen with --dir to accept files)",
                        peer.name
                    );
                }
            },
            _ => {
                let mut stream = stream;
                stream.abort(CloseCode::Refused);
            }
        }
    }
    eprintln!("* link with {} closed", peer.name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_changes_become_lines() {
        use chatr_client::{ContactPresence, PresenceView};
        let bob = Uuid::from_bytes([2; 16]);
        let name = |_: &Uuid| "bob".to_owned();
        let mut before = PresenceView::default();
        let mut now = PresenceView {
            synced: true,
            ..PresenceView::default()
        };
        now.online.insert(
            bob,
            ContactPresence {
                status: chatr_proto::PresenceStatus::Available,
                message: String::new(),
            },
        );
        assert_eq!(
            presence_lines(&before, &now, &name),
            vec!["* bob is online, available"]
        );
        before = now.clone();
        now.online.insert(
            bob,
            ContactPresence {
                status: chatr_proto::PresenceStatus::Away,
                message: "lunch".into(),
            },
        );
        assert_eq!(
            presence_lines(&before, &now, &name),
            vec!["* bob is now away: lunch"]
        );
        before = now.clone();
        now.online.clear();
        assert_eq!(
            presence_lines(&before, &now, &name),
            vec!["* bob went offline"]
        );
    }

    #[test]
    fn input_commands() {
        assert_eq!(parse_input("hello"), Input::Message("hello".into()));
        assert_eq!(parse_input(""), Input::Nothing);
        assert_eq!(parse_input("/quit"), Input::Quit);
        assert_eq!(
            parse_input("/away lunch"),
            Input::Status(Status::Away, Some("lunch".into()))
        );
        assert_eq!(parse_input("/busy"), Input::Status(Status::Busy, None));
        assert_eq!(parse_input("/back"), Input::Status(Status::Available, None));
        assert_eq!(
            parse_input("/unknown x"),
            Input::Message("/unknown x".into())
        );
    }
}
