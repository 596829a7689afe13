//! Server configuration as the library sees it.
//!
//! The binary builds a [`ServerConfig`] from CLI flags, `CHATR_*` variables and
//! a TOML file (see `settings.rs`); tests build one directly, usually with port 0
//! and short timings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Who may register identities through the REST API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationPolicy {
    /// Anyone may register.
    #[default]
    Open,
    /// A single-use token issued by an admin is required.
    Token,
    /// Only the admin CLI may add identities.
    Closed,
}

/// Spec timings, configurable so tests can run fast.
#[derive(Debug, Clone)]
pub struct Timings {
    /// Next ping goes out this long after the last pong (spec: at most 5 s).
    pub ping_interval: Duration,
    /// No matching pong this long after a ping: "Time out" (spec: 15 s).
    pub ping_timeout: Duration,
    /// TLS handshake plus PacketConnect must finish within this (default 10 s).
    pub login_timeout: Duration,
    /// A connection request nobody answers expires after this (default 30 s).
    pub request_timeout: Duration,
    /// How long an existing session has to answer the probe ping before a
    /// newcomer with the same UUID takes over (default 2 s).
    pub takeover_probe: Duration,
    /// A write to a client (a flush of queued packets, the TLS close) that
    /// takes longer than this ends the session: the client is not reading.
    pub write_timeout: Duration,
    /// REST API: the TLS handshake, each request's headers (and, on a kept-alive
    /// connection, the wait for the next request) and each request's body must
    /// each arrive within this (default 10 s). A late body is answered 408.
    pub api_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(15),
            login_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            takeover_probe: Duration::from_secs(2),
            write_timeout: Duration::from_secs(10),
            api_timeout: Duration::from_secs(10),
        }
    }
}

/// Limits that protect the server and other clients from one client.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Maximum simultaneous TCP connections (logged in or not).
    pub max_connections: usize,
    /// Maximum simultaneous TCP connections from one source IP.
    pub max_connections_per_ip: usize,
    /// Outbound packets queued per session before it is considered too slow.
    pub session_queue: usize,
    /// Connection requests a session may send per second (sustained).
    pub requests_per_second: u32,
    /// Burst allowance for connection requests.
    pub request_burst: u32,
    /// Pending (unanswered) outgoing requests one session may have, and unanswered
    /// incoming requests one session is shown at once.
    pub max_pending_requests: usize,
    /// Connection requests one session may be sent per second (sustained), from all
    /// senders together; the rest are denied on its behalf.
    pub incoming_requests_per_second: u32,
    /// Burst allowance for requests sent to one session.
    pub incoming_request_burst: u32,
    /// REST API requests per second per source IP (sustained).
    pub api_requests_per_second: u32,
    /// REST API burst per source IP.
    pub api_burst: u32,
    /// Most simultaneous REST API connections. When full, a newcomer evicts the
    /// connection idle longest (not handling a request); only when every one is
    /// busy is it refused.
    pub api_max_connections: usize,
    /// Most simultaneous REST API connections from one source IP (IPv6: one /64).
    pub api_max_connections_per_ip: usize,
    /// Listen backlog of the Connect and API TCP listeners: connections the
    /// kernel completes before the server accepts them. Linux caps it at
    /// `net.core.somaxconn` (4096 by default since Linux 5.4).
    pub listen_backlog: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 200_000,
            max_connections_per_ip: 64,
            session_queue: 64,
            requests_per_second: 10,
            request_burst: 20,
            max_pending_requests: 32,
            incoming_requests_per_second: 20,
            incoming_request_burst: 40,
            api_requests_per_second: 5,
            api_burst: 20,
            api_max_connections: 1024,
            api_max_connections_per_ip: 8,
            listen_backlog: 4096,
        }
    }
}

/// The relay for clients that cannot reach each other directly (`docs/PROTOCOL.md` §14).
///
/// Rates are bytes per second of relayed datagrams, counted as they arrive from the
/// sender; `0` means unlimited. Every relayed byte also costs the operator uplink
/// bandwidth, so the defaults protect a small server without getting in the way of a
/// typical home or office link.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Relay at all (`false`: clients are never offered a relay and are told so).
    pub enabled: bool,
    /// Also relay inside TLS sessions, for clients whose network blocks UDP.
    pub tls: bool,
    /// Relayed exchanges the whole server keeps at once.
    pub max_links: usize,
    /// Relayed exchanges one client (UUID) may be a party of at once.
    pub max_links_per_client: usize,
    /// A relay that carried nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Sustained relayed bytes per second one client may send (0 = unlimited).
    pub client_rate: u64,
    /// Burst allowance per client, in bytes.
    pub client_burst: u64,
    /// Sustained relayed bytes per second for the whole server (0 = unlimited).
    pub total_rate: u64,
    /// Burst allowance of the whole server, in bytes.
    pub total_burst: u64,
    /// Relayed datagrams queued for one TLS session before more are dropped.
    pub tls_queue: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        const MIB: u64 = 1024 * 1024;
        Self {
            enabled: true,
            tls: true,
            max_links: 10_000,
            max_links_per_client: 16,
            idle_timeout: Duration::from_secs(60),
            client_rate: 100 * MIB,
            client_burst: 16 * MIB,
            total_rate: 1024 * MIB,
            total_burst: 64 * MIB,
            tls_queue: 512,
        }
    }
}

/// Where a cluster keeps its registry: PostgreSQL, shared by every node (feature
/// `cluster`). Without it the registry is the redb file in the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// libpq-style connection string or URL, e.g.
    /// `postgresql://chatr@db.internal/chatr?sslmode=require`.
    pub url: String,
    /// PEM CA certificate(s) to verify the server's certificate with when TLS is
    /// used; default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Connections kept open for writes and lookups.
    pub pool_size: usize,
}

/// Everything `chatr_server::start` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// TCP (TLS) and UDP (endpoint discovery, STUN) listen address. Port 0 in tests.
    /// The default `[::]` is dual-stack (`IPV6_V6ONLY` off): IPv4 clients appear as
    /// IPv4 everywhere (their mapped addresses are unmapped), IPv6 clients as IPv6; on a
    /// host without IPv6 the server falls back to `0.0.0.0`.
    pub listen: SocketAddr,
    /// HTTPS registry API listen address (dual-stack by default, like `listen`).
    pub api_listen: SocketAddr,
    /// Where the registry database, generated certificate and admin socket live.
    pub data_dir: PathBuf,
    /// PEM certificate chain; `None` = self-signed cert kept in `data_dir`.
    pub cert: Option<PathBuf>,
    /// PEM private key; required when `cert` is set.
    pub key: Option<PathBuf>,
    /// Extra subject alternative names (DNS names or IP addresses) for the
    /// self-signed certificate created on first start (`--san`). The defaults
    /// localhost, 127.0.0.1, ::1 and the hostname are always included.
    pub san: Vec<String>,
    /// Refuse version-1 (unbound) login signatures.
    pub require_channel_binding: bool,
    /// Who may register.
    pub registration: RegistrationPolicy,
    /// Protocol timings.
    pub timings: Timings,
    /// Protection limits.
    pub limits: Limits,
    /// The relay.
    pub relay: RelayConfig,
    /// Cluster mode (several nodes behind one name); off without a NATS URL.
    pub cluster: crate::cluster::ClusterConfig,
    /// The cluster's shared registry; `None`: the redb file in `data_dir`.
    pub registry_postgres: Option<PostgresConfig>,
    /// Presence of mutual contacts.
    pub presence: crate::presence::PresenceConfig,
    /// Extra UDP ports that answer STUN for NAT behaviour discovery (`docs/PROTOCOL.md`
    /// §10.7): this many, from the listen port + 2 (any free ports when the listen port
    /// is 0). 0 turns NAT discovery off.
    pub nat_probe_ports: usize,
}

impl ServerConfig {
    /// Defaults for a server keeping its state in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 7777)),
            api_listen: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 7778)),
            data_dir: data_dir.into(),
            cert: None,
            key: None,
            san: Vec::new(),
            require_channel_binding: false,
            registration: RegistrationPolicy::Open,
            timings: Timings::default(),
            limits: Limits::default(),
            relay: RelayConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
            registry_postgres: None,
            presence: crate::presence::PresenceConfig::default(),
            nat_probe_ports: 2,
        }
    }

    /// Loopback, port 0 everywhere: what in-process tests want.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Self::new(data_dir);
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.api_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }
}
