//! What every link command shares: starting the client, naming peers, asking
//! for or accepting a link, and writing the `--report` JSON.

use chatr_client::contacts::Contacts;
use chatr_client::identity::public_key_base64;
use std::time::Duration;

use chatr_client::link::PeerLink;
use chatr_client::path::LinkPaths;
use chatr_client::session::PresenceWanted;
use chatr_client::{
    AttemptReport, Client, ClientError, ClientOptions, IncomingRequest, LinkReport, PresenceView,
    TransferReport,
};
use chatr_proto::PresenceStatus;
use ed25519_dalek::VerifyingKey;
use uuid::Uuid;

use super::{CliError, Globals, setup};

/// A peer we are about to link with, and the key it must prove.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) uuid: Uuid,
    pub(crate) key: VerifyingKey,
    /// The contact's alias, or the UUID for strangers.
    pub(crate) name: String,
}

/// Who `listen`/`pipe --listen`/`receive` accept links from.
#[derive(Debug, Clone)]
pub(crate) enum Policy {
    /// Anyone in the address book.
    Contacts,
    /// Only this contact.
    Only(Uuid),
    /// Contacts, plus anyone else with the key the registry has for them.
    Anyone,
}

impl Policy {
    /// `--accept-any` (anyone), else `--from NAME` (a contact), else every
    /// contact.
    pub(crate) fn from_args(
        g: &Globals,
        accept_any: bool,
        from: Option<&str>,
    ) -> Result<Self, CliError> {
        match (accept_any, from) {
            (true, _) => Ok(Self::Anyone),
            (false, None) => Ok(Self::Contacts),
            (false, Some(name)) => Ok(Self::Only(resolve_contact(g, name)?.uuid)),
        }
    }
}

/// Starts a client from the home directory and waits until it is online.
pub(crate) async fn start_client(g: &Globals) -> Result<Client, CliError> {
    let mut options = ClientOptions::from_home(&g.home)?;
    options.path_policy = g.path;
    // Our consent list goes out with the login, so the server's first acknowledgement
    // already covers it (a later set_presence races the first acknowledgement).
    options.presence = presence_wanted(g, PresenceStatus::Available, "")?;
    options.port_mapping.mode = g.port_mapping;
    let wait = options.online_timeout;
    let client = Client::start(options).await?;
    let online = interruptible(async { Ok(client.wait_online(wait).await?) }).await;
    if let Err(e) = online {
        client.shutdown().await;
        return Err(e);
    }
    Ok(client)
}

/// What we share through presence: every contact not added with `--no-presence`.
pub(crate) fn presence_wanted(
    g: &Globals,
    status: PresenceStatus,
    message: &str,
) -> Result<PresenceWanted, CliError> {
    Ok(PresenceWanted {
        contacts: g.home.contacts()?.presence_list(),
        status,
        message: message.to_owned(),
    })
}

/// Logs in just long enough to learn which contacts are online.
pub(crate) async fn fetch_presence(g: &Globals) -> Result<PresenceView, CliError> {
    let client = start_client(g).await?;
    let result = async {
        client
            .set_presence(presence_wanted(g, PresenceStatus::Available, "")?)
            .await?;
        let view = client.wait_presence(Duration::from_secs(10)).await?;
        if !view.available {
            return Err(CliError::Usage(
                "the server does not tell who is online (it has no presence)".into(),
            ));
        }
        Ok(view)
    }
    .await;
    client.shutdown().await;
    result
}

/// "online (away: lunch)", "offline", or "unknown" while the server has not answered.
pub(crate) fn describe_presence(view: &PresenceView, uuid: &Uuid) -> String {
    match view.online.get(uuid) {
        Some(p) if p.message.is_empty() => format!("online ({})", p.status),
        Some(p) => format!("online ({}: {})", p.status, p.message),
        None if view.synced => "offline".to_owned(),
        None => "unknown".to_owned(),
    }
}

/// A contact by alias or UUID.
pub(crate) fn resolve_contact(g: &Globals, name: &str) -> Result<Peer, CliError> {
    let book = g.home.contacts()?;
    book.find(name)
        .map(|c| Peer {
            uuid: c.uuid,
            key: c.key,
            name: c.alias.clone(),
        })
        .ok_or_else(|| ClientError::UnknownPeer(name.to_string()).into())
}

/// A contact, or a UUID that is not one (its key then comes from the registry).
pub(crate) async fn resolve_peer(g: &Globals, name: &str) -> Result<Peer, CliError> {
    match resolve_contact(g, name) {
        Ok(peer) => Ok(peer),
        Err(not_found) => {
            let Ok(uuid) = Uuid::parse_str(name.trim()) else {
                return Err(not_found);
            };
            let key = setup::lookup_peer(g, uuid).await?;
            eprintln!(
                "note: {uuid} is not in your contacts; using the key the registry gives ({}). \
                 Pin it with `chatr contacts add {uuid} <alias>`.",
                public_key_base64(&key)
            );
            Ok(Peer {
                uuid,
                key,
                name: uuid.to_string(),
            })
        }
    }
}

/// Asks for a link to `peer`, writing the report either way.
pub(crate) async fn request(
    g: &Globals,
    client: &Client,
    peer: &Peer,
) -> Result<PeerLink, CliError> {
    eprintln!("asking {} for a link…", peer.name);
    let attempt = tokio::select! {
        r = client.request_link(peer.uuid, peer.key) => r,
        _ = ctrl_c() => return Err(CliError::Interrupted),
    };
    match attempt {
        Ok((link, report)) => {
            announce(peer, &report, &link);
            write_report(g, &report.to_attempt());
            Ok(link)
        }
        Err(e) => {
            write_report(g, &AttemptReport::failure(Some(peer.uuid), &e));
            Err(e.into())
        }
    }
}

/// Decides on one request per `policy`: the peer to accept (with its key), or
/// `None` after denying it.
pub(crate) async fn decide(
    g: &Globals,
    req: &IncomingRequest,
    policy: &Policy,
) -> Result<Option<Peer>, CliError> {
    let book: Contacts = g.home.contacts()?;
    let uuid = req.peer();
    let contact = book.by_uuid(&uuid).map(|c| Peer {
        uuid,
        key: c.key,
        name: c.alias.clone(),
    });
    let peer = match (policy, contact) {
        (Policy::Only(only), Some(c)) if *only == uuid => Some(c),
        (Policy::Only(_), _) => None,
        (Policy::Contacts | Policy::Anyone, Some(c)) => Some(c),
        (Policy::Contacts, None) => None,
        (Policy::Anyone, None) => match setup::lookup_peer(g, uuid).await {
            Ok(key) => Some(Peer {
                uuid,
                key,
                name: uuid.to_string(),
            }),
            Err(e) => {
                eprintln!("cannot get the key of {uuid} from the registry: {e}");
                None
            }
        },
    };
    if peer.is_none() {
        eprintln!("denied a link request from {uuid} (not accepted by this command's policy)");
    }
    Ok(peer)
}

/// Waits for requests, denying those `policy` refuses, until one links.
/// Failed attempts are reported and end the wait only if `stop_on_failure`.
pub(crate) async fn accept_one(
    g: &Globals,
    client: &Client,
    policy: &Policy,
    stop_on_failure: bool,
) -> Result<(PeerLink, Peer), CliError> {
    loop {
        let req = tokio::select! {
            r = client.next_request() => r.ok_or(ClientError::ShuttingDown)?,
            _ = ctrl_c() => return Err(CliError::Interrupted),
        };
        let Some(peer) = decide(g, &req, policy).await? else {
            let _ = req.deny().await;
            continue;
        };
        eprintln!("{} asks for a link; accepting…", peer.name);
        let attempt = tokio::select! {
            r = req.accept(peer.key) => r,
            _ = ctrl_c() => return Err(CliError::Interrupted),
        };
        match attempt {
            Ok((link, report)) => {
                announce(&peer, &report, &link);
                write_report(g, &report.to_attempt());
                return Ok((link, peer));
            }
            Err(e) => {
                write_report(g, &AttemptReport::failure(Some(peer.uuid), &e));
                if stop_on_failure {
                    return Err(e.into());
                }
                eprintln!("link with {} failed: {e}", peer.name);
            }
        }
    }
}

fn announce(peer: &Peer, report: &LinkReport, link: &PeerLink) {
    eprintln!("linked with {}: {}", peer.name, report.describe());
    if let Some(paths) = link.paths() {
        tokio::spawn(announce_path_changes(peer.name.clone(), paths.clone()));
    }
}

/// Tells the user when the link moves to another path (direct ↔ relayed), and why.
async fn announce_path_changes(name: String, mut paths: LinkPaths) {
    let mut shown = paths.current().class;
    while paths.changed().await {
        let now = paths.current();
        if now.class == shown {
            continue;
        }
        shown = now.class;
        let Some(class) = now.class else { continue };
        match &now.reason {
            Some(reason) => eprintln!("link with {name}: now {}: {reason}", class.describe()),
            None => eprintln!("link with {name}: now {}", class.describe()),
        }
    }
}

/// Writes the `--report` file, if one was asked for.
pub(crate) fn write_report(g: &Globals, report: &AttemptReport) {
    if let Ok(mut last) = g.last_report.lock() {
        *last = Some(report.clone());
    }
    if let Some(path) = &g.report
        && let Err(e) = std::fs::write(path, report.to_json_line())
    {
        eprintln!("chatr: cannot write the report to {}: {e}", path.display());
    }
}

/// Adds what went through the link to the last `--report` and writes it again.
pub(crate) fn report_transfer(g: &Globals, transfer: TransferReport) {
    let report = match g.last_report.lock() {
        Ok(mut last) => last.as_mut().map(|r| {
            r.transfer = Some(transfer);
            r.clone()
        }),
        Err(_) => None,
    };
    if let Some(report) = report {
        write_report(g, &report);
    }
}

/// Runs `fut`, or gives up with [`CliError::Interrupted`] on Ctrl-C.
pub(crate) async fn interruptible<T>(
    fut: impl std::future::Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    tokio::select! {
        r = fut => r,
        _ = ctrl_c() => Err(CliError::Interrupted),
    }
}

/// Resolves once the user pressed Ctrl-C or the process got SIGTERM.
///
/// One watcher is installed for the whole process (see [`watch_interrupts`]),
/// so a signal arriving between two `select!` rounds is never lost.
pub(crate) async fn ctrl_c() {
    interrupted().cancelled().await;
}

fn interrupted() -> &'static tokio_util::sync::CancellationToken {
    static TOKEN: std::sync::OnceLock<tokio_util::sync::CancellationToken> =
        std::sync::OnceLock::new();
    TOKEN.get_or_init(tokio_util::sync::CancellationToken::new)
}

/// Starts watching SIGINT and SIGTERM (call once, inside the runtime).
pub(crate) fn watch_interrupts() {
    let token = interrupted().clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
        }
        token.cancel();
    });
}
