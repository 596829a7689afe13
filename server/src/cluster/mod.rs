//! Cluster mode: several Connect nodes behind one name (docs/CLUSTER.md).
//!
//! The `crate::hub::Hub` knows the sessions of *this* node. What it cannot answer
//! alone it asks a `Cluster`:
//!
//! - **Claims.** A login is admitted only once it holds the UUID both in the local
//!   hub and cluster-wide (`Cluster::claim`), so "Already connected!" and the
//!   dead-session takeover keep their meaning across nodes: a UUID held on another
//!   node is probed there (`Cluster::probe`) and taken over only if that session
//!   does not answer (`Cluster::take_over`).
//! - **Routing.** A ConnectionRequest, Accept, Denied or ClientInfo for a UUID with no
//!   session here goes to the node that holds it (`Cluster::forward`); when no node
//!   does, or the cluster cannot be reached, the sender is told the peer is offline.
//! - **UDP bindings** whose token belongs to another node's session are routed there by
//!   the token's first bytes (`Cluster::bind_elsewhere`).
//! - **Relays** whose two parties are on different nodes live on the initiator's node;
//!   the other node hops their datagrams there (`Cluster::relay_hop`).
//!
//! Without the `cluster` feature (or without a NATS URL) the hub uses `LocalOnly`:
//! every claim is granted at once and every other node is "offline", which is exactly
//! the single-node server. With it, `nats::NatsCluster` implements all of the above
//! on NATS core requests and a JetStream key-value bucket.

#[cfg(feature = "cluster")]
pub mod nats;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use chatr_proto::UDP_TOKEN_LEN;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::hub::Mailbox;
use crate::relay::WeakRelay;
use crate::session::{PeerEndpoints, PeerEvent};

/// A boxed future.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How many leading bytes of a UDP token name the node that issued it.
pub const TOKEN_PREFIX_LEN: usize = 4;

/// A session holding a UUID on some node, as recorded in the cluster's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    /// The node's id.
    pub(crate) node: String,
    /// The session's id on that node.
    pub(crate) session: u64,
    /// Revision of the claim, for a conditional takeover.
    pub(crate) revision: u64,
}

/// The answer to [`Cluster::claim`] and [`Cluster::take_over`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) enum ClusterClaim {
    /// The UUID is ours cluster-wide.
    Claimed,
    /// Another session holds it (probe it, then take over if it is dead).
    Held(Holder),
    /// The cluster cannot be asked (NATS is down): admitted locally, and the claim is
    /// checked again when the cluster comes back.
    Unavailable,
}

/// How the cluster looks from this node, for `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterHealth {
    /// This node's name.
    pub node: String,
    /// Whether this node is connected to NATS.
    pub connected: bool,
    /// Whether the claims bucket answered the last time it was used.
    pub claims_ok: bool,
    /// Other nodes heard from recently.
    pub peers: Vec<String>,
}

/// What the hub asks of the rest of the cluster. Every call returns at once; what
/// needs the network comes back as a future or through the sender's inbox.
pub(crate) trait Cluster: Send + Sync + fmt::Debug {
    /// Whether there are other nodes at all.
    fn is_clustered(&self) -> bool;

    /// The first bytes of the UDP tokens this node hands out (so other nodes can
    /// route a binding datagram here).
    fn token_prefix(&self) -> Option<[u8; TOKEN_PREFIX_LEN]>;

    /// Claims `uuid` cluster-wide for this node's session `session`, which already
    /// holds it in the local hub.
    fn claim(&self, uuid: Uuid, session: u64) -> BoxFuture<ClusterClaim>;

    /// Replaces `holder`'s claim of `uuid` (it did not answer its probe) with ours;
    /// the holder's session, if it still exists, is ended.
    fn take_over(&self, uuid: Uuid, session: u64, holder: Holder) -> BoxFuture<ClusterClaim>;

    /// Asks `holder` whether its session is alive: the receiver yields `Ok` once that
    /// session's client answered a ping, an error if it is gone or cannot be asked.
    fn probe(&self, uuid: Uuid, holder: &Holder) -> oneshot::Receiver<()>;

    /// This node's session `session` of `uuid` ended: give up its claim.
    fn release(&self, uuid: Uuid, session: u64);

    /// Delivers `event` from `from` (with its observed `endpoints`) to `to`, which has
    /// no session on this node. `Err` gives the event back at once (no other node to
    /// ask); with `Ok` the outcome arrives later, and only a failure is reported, as
    /// [`crate::session::HubEvent::Undeliverable`] in `sender`.
    fn forward(
        &self,
        from: Uuid,
        endpoints: PeerEndpoints,
        to: Uuid,
        event: PeerEvent,
        sender: mpsc::Sender<Mailbox>,
    ) -> Result<(), PeerEvent>;

    /// A UDP binding request whose token no local session holds: if another node
    /// issued the token, it checks the request and the future yields the reply to send
    /// to `source` (if any).
    fn bind_elsewhere(
        &self,
        token: &[u8; UDP_TOKEN_LEN],
        datagram: &[u8],
        source: SocketAddr,
    ) -> Option<BoxFuture<Option<Vec<u8>>>>;

    /// How the cluster looks, or `None` for a single node.
    fn health(&self) -> Option<ClusterHealth>;

    /// This node's id among the others (`None`: a single node).
    fn node_id(&self) -> Option<String> {
        None
    }

    /// The node that holds `uuid`'s session, as last seen when routing to it or
    /// hearing from it (`None`: not known, or a single node).
    fn route_of(&self, _uuid: &Uuid) -> Option<String> {
        None
    }

    /// Sends a relay hop (`crate::relay`'s cross-node datagrams) to `node` without
    /// waiting, through a bounded queue; `false` when it cannot go (no cluster, NATS
    /// down, queue full).
    fn relay_hop(&self, _node: &str, _hop: bytes::Bytes) -> bool {
        false
    }

    /// Gives the cluster this node's relay, for the hops other nodes send here.
    fn set_relay(&self, _relay: WeakRelay) {}

    /// Appends this node's cluster metrics in Prometheus text format.
    fn render_metrics(&self, _out: &mut String) {}

    /// Lets this node's last messages (claim releases of ended sessions) go out.
    fn close(&self) -> BoxFuture<()> {
        Box::pin(async {})
    }
}

/// The single-node server: no other node, every claim granted.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LocalOnly;

impl Cluster for LocalOnly {
    fn is_clustered(&self) -> bool {
        false
    }

    fn token_prefix(&self) -> Option<[u8; TOKEN_PREFIX_LEN]> {
        None
    }

    fn claim(&self, _: Uuid, _: u64) -> BoxFuture<ClusterClaim> {
        Box::pin(async { ClusterClaim::Claimed })
    }

    fn take_over(&self, _: Uuid, _: u64, _: Holder) -> BoxFuture<ClusterClaim> {
        Box::pin(async { ClusterClaim::Claimed })
    }

    fn probe(&self, _: Uuid, _: &Holder) -> oneshot::Receiver<()> {
        // Dropping the sender: "dead".
        oneshot::channel().1
    }

    fn release(&self, _: Uuid, _: u64) {}

    fn forward(
        &self,
        _: Uuid,
        _: PeerEndpoints,
        _: Uuid,
        event: PeerEvent,
        _: mpsc::Sender<Mailbox>,
    ) -> Result<(), PeerEvent> {
        Err(event)
    }

    fn bind_elsewhere(
        &self,
        _: &[u8; UDP_TOKEN_LEN],
        _: &[u8],
        _: SocketAddr,
    ) -> Option<BoxFuture<Option<Vec<u8>>>> {
        None
    }

    fn health(&self) -> Option<ClusterHealth> {
        None
    }
}

/// Cluster mode's settings (`cluster_*` keys; docs/CLUSTER.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// NATS server URL(s), comma-separated (`nats://nats.internal:4222`, `tls://…`).
    /// `None`: a single node.
    pub nats_url: Option<String>,
    /// This node's name in logs, metrics and `/healthz` (default: the host name).
    pub node_name: Option<String>,
    /// Prefix of every NATS subject the nodes use.
    pub subject_prefix: String,
    /// Name of the JetStream key-value bucket holding the session claims.
    pub claims_bucket: String,
    /// Longest a cross-node request (forward, probe, binding) waits for its answer.
    ///
    /// A request that reaches a node in the instant it dies (before NATS has seen its
    /// connection close) is lost with it and waits all of this, so the default stays
    /// under the 1 s in which a dead node's UUIDs must read offline.
    pub request_timeout: Duration,
    /// A claim not refreshed for this long expires (the bucket's max age); nodes
    /// refresh theirs at a quarter of it.
    pub claim_ttl: Duration,
    /// How often nodes announce themselves to each other; one silent for three
    /// intervals counts as gone.
    pub heartbeat: Duration,
    /// PEM CA file to verify a `tls://` NATS server with. (A user and password, or
    /// a token, go into the URL: `nats://chatr:secret@nats.internal:4222`.)
    pub nats_ca: Option<std::path::PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats_url: None,
            node_name: None,
            subject_prefix: "chatr".to_owned(),
            claims_bucket: "chatr_sessions".to_owned(),
            request_timeout: Duration::from_millis(750),
            claim_ttl: Duration::from_secs(3600),
            heartbeat: Duration::from_secs(1),
            nats_ca: None,
        }
    }
}
