//! What the long-running commands that host rooms (`room join`, `room send`,
//! `room who`, `tui`) share: the client, its presence, the link pool and the room host.

use std::sync::Arc;

use chatr_client::Client;
use chatr_client::home::Home;
use chatr_client::link::LinkStream;
use chatr_client::peers::{KeyPolicy, Peers};
use chatr_client::room::host::{AcceptInvites, HostOptions, MembersPolicy};
use chatr_client::room::store::RoomStore;
use chatr_client::room::{RoomConfig, RoomHost, RoomHostEvent, RoomId};
use chatr_proto::PresenceStatus;
use ed25519_dalek::VerifyingKey;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::link::{presence_wanted, start_client};
use super::{CliError, Globals};

/// Who may link with us: contacts (their pinned key), then members of our rooms (the
/// key the room's signed records give).
pub(crate) struct CliPolicy {
    home: Home,
    members: MembersPolicy,
}

impl CliPolicy {
    pub(crate) fn new(home: &Home) -> Self {
        Self {
            home: home.clone(),
            members: MembersPolicy::new(RoomStore::new(home.dir())),
        }
    }
}

impl KeyPolicy for CliPolicy {
    fn key_for(&self, peer: &Uuid) -> Option<VerifyingKey> {
        // Read on each request: a contact added meanwhile counts at once.
        if let Ok(book) = self.home.contacts()
            && let Some(c) = book.by_uuid(peer)
        {
            return Some(c.key);
        }
        self.members.key_for(peer)
    }
}

/// A client online with presence, its link pool and its room host.
pub(crate) struct Node {
    pub(crate) client: Client,
    pub(crate) peers: Peers,
    pub(crate) host: RoomHost,
    pub(crate) events: mpsc::Receiver<RoomHostEvent>,
    /// Streams that are not room streams (two-party chats, files).
    pub(crate) others: mpsc::Receiver<(Uuid, LinkStream)>,
}

/// Starts a node running `rooms` (all when `None`).
pub(crate) async fn start_node(
    g: &Globals,
    rooms: Option<Vec<RoomId>>,
    accept_invites: AcceptInvites,
    config: RoomConfig,
) -> Result<Node, CliError> {
    let client = start_client(g).await?;
    let started = async {
        client
            .set_presence(presence_wanted(g, PresenceStatus::Available, "")?)
            .await?;
        let (peers, streams) = Peers::start(client.clone(), Arc::new(CliPolicy::new(&g.home)));
        let identity = g.home.identity()?;
        let alias = g.home.config()?.display_alias();
        let (host, events) = RoomHost::start(
            peers.clone(),
            streams.rooms,
            identity,
            RoomStore::new(g.home.dir()),
            HostOptions {
                alias,
                rooms,
                accept_invites,
                config,
            },
        )?;
        Ok::<_, CliError>(Node {
            client: client.clone(),
            peers,
            host,
            events,
            others: streams.others,
        })
    }
    .await;
    if started.is_err() {
        client.shutdown().await;
    }
    started
}

impl Node {
    /// Says goodbye in every room and to the server.
    pub(crate) async fn stop(self) {
        self.host.stop().await;
        self.peers.stop();
        self.client.shutdown().await;
    }
}
