//! Starting and stopping the whole server.
//!
//! [`start`] binds everything (TLS on TCP and the discovery/STUN port on UDP
//! at the same port number, the HTTPS registry API, the admin socket; both TCP
//! listeners with the configured `listen_backlog`, see [`crate::listen`]), spawns
//! the tasks and returns a [`ServerHandle`] at once; [`run`] is start + wait.
//! Cancelling the `shutdown` token stops accepting, sends every connection
//! PacketDisconnect "Server shutting down", lets in-flight registry writes
//! finish and then lets [`ServerHandle::join`] return.

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{AdminContext, AdminListener, SessionControl, serve_admin};
use crate::api::{ApiContext, serve_api};
use crate::cluster::{Cluster, LocalOnly};
use crate::config::ServerConfig;
use crate::conn_limit::ConnectionLimiter;
use crate::error::ServerError;
use crate::hub::Hub;
use crate::listen::bind_tcp;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::relay::Relay;
use crate::session::SessionConfig;
use crate::session::driver::{ConnContext, serve_tcp};
use crate::tls::TlsIdentity;
use crate::udp;

/// A running server. Dropping it does not stop the server: cancel the
/// shutdown token, then [`ServerHandle::join`].
#[derive(Debug)]
pub struct ServerHandle {
    connect_addr: SocketAddr,
    api_addr: SocketAddr,
    admin_socket: std::path::PathBuf,
    tls: TlsIdentity,
    registry: Registry,
    metrics: Arc<Metrics>,
    hub: Hub,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl ServerHandle {
    /// The Connect address: TLS on TCP, endpoint discovery and STUN on UDP.
    pub fn connect_addr(&self) -> SocketAddr {
        self.connect_addr
    }

    /// The HTTPS registry API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Path of the admin socket.
    pub fn admin_socket(&self) -> &std::path::Path {
        &self.admin_socket
    }

    /// Lowercase hex SHA-256 of the current leaf certificate (what clients pin).
    pub fn cert_fingerprint(&self) -> String {
        self.tls.fingerprint()
    }

    /// The current certificate chain in PEM.
    pub fn cert_pem(&self) -> String {
        self.tls.cert_pem()
    }

    /// The TLS identity (e.g. to [`TlsIdentity::reload`] on SIGHUP).
    pub fn tls(&self) -> &TlsIdentity {
        &self.tls
    }

    /// The identity registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The online sessions.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// How the cluster looks from this node (`None`: a single node).
    pub fn cluster_health(&self) -> Option<crate::cluster::ClusterHealth> {
        self.hub.cluster().health()
    }

    /// The token that stops the server.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Waits until every task has stopped (after the shutdown token was
    /// cancelled) and the registry has finished its writes.
    pub async fn join(self) {
        self.tracker.close();
        self.tracker.wait().await;
        self.hub.cluster().close().await;
        self.registry.close().await;
        tracing::info!("server stopped");
    }
}

/// Binds everything and starts serving; returns at once.
pub async fn start(
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<ServerHandle, ServerError> {
    // 0700: the data dir holds the TLS key, the registry and the admin socket.
    // An existing directory keeps the mode its operator gave it.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
    let tls = TlsIdentity::load_or_create(&config)?;
    let registry = open_registry(&config, &shutdown).await?;
    let metrics = Arc::new(Metrics::default());
    let hub = Hub::new(Arc::clone(&metrics));
    let cluster = join_cluster(&config, &hub, &metrics, &shutdown).await?;
    hub.set_cluster(Arc::clone(&cluster));

    let backlog = config.limits.listen_backlog;
    if let Some(cap) = crate::listen::somaxconn()
        && backlog > cap
    {
        tracing::warn!(
            requested = backlog,
            somaxconn = cap,
            "listen backlog capped by net.core.somaxconn; raise it (sysctl net.core.somaxconn) for larger reconnect storms"
        );
    }
    let (listener, udp_socket) = bind_connect_port(config.listen, backlog).await?;
    let connect_addr = local_addr(&listener, config.listen, "TCP")?;
    let probe_sockets =
        crate::nat_probe::bind(config.listen, connect_addr, config.nat_probe_ports).await?;
    let mut session_config = SessionConfig::from_server(&config);
    session_config.nat_probe_ports = crate::nat_probe::ports(&probe_sockets);
    let api_listener =
        bind_tcp(config.api_listen, backlog).map_err(|source| ServerError::Bind {
            addr: config.api_listen,
            protocol: "TCP",
            source,
        })?;
    let api_addr = local_addr(&api_listener, config.api_listen, "TCP")?;
    let admin_listener = AdminListener::bind(&config.data_dir)?;
    let admin_socket = admin_listener.path().to_path_buf();

    tracing::info!(
        connect = %connect_addr,
        api = %api_addr,
        fingerprint = %tls.fingerprint(),
        registered = registry.len(),
        "chatr-server listening (TLS and UDP on the connect port)"
    );

    let tracker = TaskTracker::new();
    let relay = Relay::new(
        config.relay.clone(),
        hub.clone(),
        Arc::clone(&metrics),
        std::time::Instant::now(),
    );
    cluster.set_relay(relay.downgrade());
    let ctx = Arc::new(ConnContext {
        hub: hub.clone(),
        tls: tls.clone(),
        keys: Arc::new(registry.clone()),
        metrics: Arc::clone(&metrics),
        session: SessionConfig {
            udp_token_prefix: cluster.token_prefix(),
            ..session_config
        },
        queue: config.limits.session_queue,
        relay: relay.clone(),
        presence: crate::presence::Presence::new(config.presence.clone(), Arc::clone(&metrics)),
    });
    let limiter = ConnectionLimiter::new(
        config.limits.max_connections,
        config.limits.max_connections_per_ip,
    );
    tracker.spawn(accept_loop(
        listener,
        ctx,
        limiter,
        tracker.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(udp::serve(
        Arc::new(udp_socket),
        hub.clone(),
        relay.clone(),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    for socket in probe_sockets {
        tracker.spawn(crate::nat_probe::serve(socket, shutdown.clone()));
    }
    tracker.spawn(sweep_relays(relay, shutdown.clone()));
    let api = ApiContext::new(&config, registry.clone(), Arc::clone(&metrics), tls.clone())
        .with_health(Arc::new(NodeHealth {
            hub: hub.clone(),
            registry: registry.clone(),
            shutdown: shutdown.clone(),
        }));
    tracker.spawn(serve_api(api, api_listener, shutdown.clone()));
    let sessions: Arc<dyn SessionControl> = Arc::new(hub.clone());
    let admin = AdminContext::new(registry.clone(), Some(sessions));
    tracker.spawn(serve_admin(admin, admin_listener, shutdown.clone()));

    Ok(ServerHandle {
        connect_addr,
        api_addr,
        admin_socket,
        tls,
        registry,
        metrics,
        hub,
        shutdown,
        tracker,
    })
}

/// The registry: the cluster's PostgreSQL when configured, else the redb file.
async fn open_registry(
    config: &ServerConfig,
    shutdown: &CancellationToken,
) -> Result<Registry, ServerError> {
    match &config.registry_postgres {
        None => Ok(Registry::open_in(&config.data_dir)?),
        #[cfg(feature = "cluster")]
        Some(postgres) => {
            let registry = Registry::open_postgres(postgres, shutdown.clone()).await?;
            tracing::info!(identities = registry.len(), "registry: PostgreSQL");
            Ok(registry)
        }
        #[cfg(not(feature = "cluster"))]
        Some(_) => {
            let _ = shutdown;
            Err(ServerError::ClusterNotBuilt("registry_postgres_url"))
        }
    }
}

/// The other nodes: NATS when a URL is configured, else none.
async fn join_cluster(
    config: &ServerConfig,
    hub: &Hub,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Result<Arc<dyn Cluster>, ServerError> {
    if config.cluster.nats_url.is_none() {
        return Ok(Arc::new(LocalOnly));
    }
    #[cfg(feature = "cluster")]
    {
        let cluster = crate::cluster::nats::NatsCluster::start(
            config.cluster.clone(),
            hub.downgrade(),
            Arc::clone(metrics),
            config.timings.takeover_probe,
            shutdown.clone(),
        )
        .await?;
        Ok(Arc::new(cluster))
    }
    #[cfg(not(feature = "cluster"))]
    {
        let _ = (hub, metrics, shutdown);
        Err(ServerError::ClusterNotBuilt("cluster_nats_url"))
    }
}

/// What `/healthz` reports: "down" while shutting down; "degraded" when this node
/// serves its own clients but its cluster (NATS, the claims, the shared registry)
/// is not all there; else "ok".
#[derive(Debug)]
struct NodeHealth {
    hub: Hub,
    registry: Registry,
    shutdown: CancellationToken,
}

impl crate::api::HealthSource for NodeHealth {
    fn health(&self) -> crate::api::Health {
        use crate::api::{Health, HealthStatus};
        let mut problems: Vec<&str> = Vec::new();
        let mut details = Vec::new();
        if let Some(c) = self.hub.cluster().health() {
            details.push(format!("node: {}", c.node));
            details.push(format!("sessions: {}", self.hub.len()));
            let nats = if c.connected {
                "connected"
            } else {
                "disconnected"
            };
            details.push(format!("nats: {nats}"));
            let claims = if c.claims_ok { "ok" } else { "unavailable" };
            details.push(format!("claims: {claims}"));
            details.push(
                format!("peers: {} {}", c.peers.len(), c.peers.join(" "))
                    .trim_end()
                    .to_owned(),
            );
            if !c.connected {
                problems.push("NATS unreachable: clients of other nodes read offline");
            } else if !c.claims_ok {
                problems.push("claims bucket unavailable: logins are not checked cluster-wide");
            }
        }
        if !self.registry.is_reachable() {
            details.push("registry: unreachable".to_owned());
            problems
                .push("registry storage unreachable: registrations fail, logins use cached keys");
        }
        if self.shutdown.is_cancelled() {
            problems.insert(0, "shutting down: clients are being disconnected");
        }
        let status = if self.shutdown.is_cancelled() {
            HealthStatus::Down
        } else if problems.is_empty() {
            HealthStatus::Ok
        } else {
            HealthStatus::Degraded
        };
        Health {
            status,
            problems: problems.into_iter().map(str::to_owned).collect(),
            details,
        }
    }

    fn render_metrics(&self, out: &mut String) {
        self.hub.cluster().render_metrics(out);
    }
}

/// Starts the server and runs it until `shutdown` is cancelled and every
/// task has stopped.
pub async fn run(config: ServerConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    let handle = start(config, shutdown).await?;
    handle.join().await;
    Ok(())
}

fn local_addr(
    listener: &TcpListener,
    requested: SocketAddr,
    protocol: &'static str,
) -> Result<SocketAddr, ServerError> {
    listener.local_addr().map_err(|source| ServerError::Bind {
        addr: requested,
        protocol,
        source,
    })
}

/// Binds TCP and UDP on the same port. With port 0 the kernel picks the TCP
/// port and the UDP bind may find it taken; then both are retried.
async fn bind_connect_port(
    addr: SocketAddr,
    backlog: u32,
) -> Result<(TcpListener, UdpSocket), ServerError> {
    const ATTEMPTS: usize = 16;
    let mut last_error = None;
    for _ in 0..ATTEMPTS {
        let listener = bind_tcp(addr, backlog).map_err(|source| ServerError::Bind {
            addr,
            protocol: "TCP",
            source,
        })?;
        let bound = local_addr(&listener, addr, "TCP")?;
        match crate::listen::bind_udp(bound) {
            Ok(socket) => return Ok((listener, socket)),
            Err(source) if addr.port() == 0 && source.kind() == std::io::ErrorKind::AddrInUse => {
                last_error = Some((bound, source));
            }
            Err(source) => {
                return Err(ServerError::Bind {
                    addr: bound,
                    protocol: "UDP",
                    source,
                });
            }
        }
    }
    let (addr, source) =
        last_error.unwrap_or_else(|| (addr, std::io::Error::from(std::io::ErrorKind::AddrInUse)));
    Err(ServerError::Bind {
        addr,
        protocol: "UDP",
        source,
    })
}

/// Closes idle relays, a few times per idle timeout.
async fn sweep_relays(relay: Relay, shutdown: CancellationToken) {
    let every = (relay.config().idle_timeout / 4).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        relay.sweep(std::time::Instant::now());
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ConnContext>,
    limiter: ConnectionLimiter,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let permit = match limiter.try_admit(Instant::now(), peer.ip()) {
            Ok(permit) => permit,
            Err(cap) => {
                tracing::debug!(%peer, open = limiter.open(), ?cap, "connection cap reached; closing");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let ctx = Arc::clone(&ctx);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            serve_tcp(ctx, tcp, peer, shutdown).await;
            drop(permit);
        });
    }
    tracing::debug!("accept loop stopped");
}
