//! The server under test, as a child process (`chatr-bench serve …`, hidden).
//!
//! Two kinds, same certificate, same rustls configuration, same tokio runtime
//! (multi-threaded, one worker per core, as `chatr-server`'s `main`):
//!
//! * [`ServerKind::Chatr`]: [`chatr_server::start`] with the benchmark identities
//!   inserted into the in-memory registry, connection caps raised to fit the run,
//!   spec timings unless told otherwise, logs at `warn` unless told otherwise.
//! * [`ServerKind::Bare`]: a bare tokio-rustls accept loop, one task per
//!   connection, that computes the same exporter value, answers PacketConnect with a
//!   canned PacketConnected (no registry lookup, no signature check, no hub) and
//!   echoes every other frame back. It never pings.
//!
//! Control: the process prints `READY <addr>` (chatr kind: `READY <addr>
//! <api addr>`) on stdout once listening; each
//! `stats` line on stdin is answered with one JSON line; end of stdin stops the
//! server gracefully (so it also stops when the parent dies).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chatr_proto::{CHANNEL_BINDING_EXPORTER_LABEL, Packet, PacketConnected, decode_frame};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::bench::BenchError;

/// Which server runs in the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// `chatr_server::start`.
    Chatr,
    /// The bare tokio-rustls baseline.
    Bare,
}

impl ServerKind {
    /// Name for tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Chatr => "chatr-server",
            Self::Bare => "bare tokio-rustls",
        }
    }
}

/// Arguments of the hidden `serve` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Which server.
    #[arg(long, value_enum)]
    pub kind: ServerKind,
    /// PEM certificate.
    #[arg(long)]
    pub cert: PathBuf,
    /// PEM key.
    #[arg(long)]
    pub key: PathBuf,
    /// Data directory (chatr kind).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Identities file (chatr kind), see `identity::write_public`.
    #[arg(long)]
    pub identities: Option<PathBuf>,
    /// Ping interval in ms (chatr kind) [default: spec, 5000].
    #[arg(long)]
    pub ping_interval_ms: Option<u64>,
    /// Ping timeout in ms (chatr kind) [default: spec, 15000].
    #[arg(long)]
    pub ping_timeout_ms: Option<u64>,
    /// Log filter for the server (tracing).
    #[arg(long, default_value = "warn")]
    pub log: String,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Listen backlog of the chatr kind's listeners [default: the server's, 4096].
    #[arg(long)]
    pub listen_backlog: Option<u32>,
    /// REST API connection cap (chatr kind) [default: the server's].
    #[arg(long)]
    pub api_max_connections: Option<usize>,
    /// Call glibc's `malloc_trim(0)` this often, ms (to measure trimming; only
    /// meaningful when this binary was built with the glibc allocator).
    #[arg(long)]
    pub malloc_trim_ms: Option<u64>,
    /// Cluster mode: NATS URL (chatr kind; needs the `cluster` feature).
    #[arg(long)]
    pub cluster_nats_url: Option<String>,
    /// Cluster mode: this node's name.
    #[arg(long)]
    pub node_name: Option<String>,
    /// Cluster mode: the PostgreSQL registry.
    #[arg(long)]
    pub registry_postgres_url: Option<String>,
    /// Takeover probe in ms [default: the server's, 2000].
    #[arg(long)]
    pub takeover_probe_ms: Option<u64>,
}

/// Runs the child until its stdin closes.
pub fn serve_main(args: ServeArgs) -> Result<(), BenchError> {
    let _ = crate::bench::sys::raise_nofile(1 << 20);
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .map_err(|e| BenchError::Server(format!("bad --log {:?}: {e}", args.log)))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("tokio runtime", e))?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        match args.kind {
            ServerKind::Chatr => serve_chatr(&args, shutdown).await,
            ServerKind::Bare => serve_bare(&args, shutdown).await,
        }
    })
}

async fn serve_chatr(args: &ServeArgs, shutdown: CancellationToken) -> Result<(), BenchError> {
    let mut config = chatr_server::ServerConfig::for_tests(&args.data_dir);
    config.listen = args.listen;
    config.cert = Some(args.cert.clone());
    config.key = Some(args.key.clone());
    // The run decides how many clients there are, not the production caps.
    config.limits.max_connections = 1 << 20;
    config.limits.max_connections_per_ip = 1 << 20;
    if let Some(ms) = args.ping_interval_ms {
        config.timings.ping_interval = Duration::from_millis(ms);
    }
    if let Some(ms) = args.ping_timeout_ms {
        config.timings.ping_timeout = Duration::from_millis(ms);
    }
    if let Some(backlog) = args.listen_backlog {
        config.limits.listen_backlog = backlog;
    }
    if let Some(cap) = args.api_max_connections {
        config.limits.api_max_connections = cap;
    }
    config.cluster.nats_url = args.cluster_nats_url.clone();
    config.cluster.node_name = args.node_name.clone();
    config.registry_postgres =
        args.registry_postgres_url
            .clone()
            .map(|url| chatr_server::PostgresConfig {
                url,
                ca_file: None,
                pool_size: 8,
            });
    if let Some(ms) = args.takeover_probe_ms {
        config.timings.takeover_probe = Duration::from_millis(ms);
    }
    if config.registry_postgres.is_some() {
        // The registry benchmark registers as fast as it can from one address.
        config.limits.api_requests_per_second = 1_000_000;
        config.limits.api_burst = 1_000_000;
    }
    if let Some(ms) = args.malloc_trim_ms {
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(ms.max(1)));
                crate::bench::sys::malloc_trim();
            }
        });
    }
    let handle = chatr_server::start(config, shutdown.clone())
        .await
        .map_err(|e| BenchError::Server(format!("chatr_server::start: {e}")))?;
    if let Some(path) = &args.identities {
        for (uuid, key) in crate::bench::identity::read_public(path)? {
            handle.registry().insert_unchecked(uuid, key);
        }
    }
    println!("READY {} {}", handle.connect_addr(), handle.api_addr());
    let hub = handle.hub().clone();
    let metrics = Arc::clone(handle.metrics());
    control(move || {
        let timeouts = metrics
            .render()
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("ping_timeout"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>();
        serde_json::json!({ "online": hub.len(), "ping_timeouts": timeouts })
    })
    .await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), handle.join()).await;
    Ok(())
}

async fn serve_bare(args: &ServeArgs, shutdown: CancellationToken) -> Result<(), BenchError> {
    let identity = chatr_server::tls::TlsIdentity::from_files(&args.cert, &args.key)?;
    let acceptor = identity.acceptor();
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| BenchError::io(format!("bind {}", args.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| BenchError::io("local_addr", e))?;
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accept_open = Arc::clone(&open);
    let stop = shutdown.clone();
    let accept = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                a = listener.accept() => a,
            };
            let Ok((tcp, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let open = Arc::clone(&accept_open);
            let stop = stop.clone();
            tokio::spawn(async move {
                open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = bare_connection(acceptor, tcp) => {}
                }
                open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            });
        }
    });
    println!("READY {addr}");
    control(move || {
        serde_json::json!({ "online": open.load(std::sync::atomic::Ordering::Relaxed), "ping_timeouts": 0 })
    })
    .await;
    shutdown.cancel();
    let _ = accept.await;
    Ok(())
}

/// One bare connection: handshake, exporter, then canned login / echo until EOF.
async fn bare_connection(acceptor: TlsAcceptor, tcp: TcpStream) {
    let Ok(Ok(mut tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
    else {
        return;
    };
    let _ = tls
        .get_ref()
        .1
        .export_keying_material([0u8; 32], CHANNEL_BINDING_EXPORTER_LABEL, None);
    let mut buf: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        out.clear();
        let mut close = false;
        loop {
            match decode_frame(&buf) {
                Ok((packet, used)) => {
                    match packet {
                        Packet::Connect(_) => Packet::Connected(PacketConnected {
                            udp_token: Some([0u8; 16]),
                            session: None,
                        })
                        .encode(&mut out),
                        Packet::Disconnect(_) => close = true,
                        _ => out.extend_from_slice(buf.get(..used).unwrap_or_default()),
                    }
                    buf.drain(..used);
                }
                Err(e) if e.is_incomplete() => break,
                Err(_) => {
                    close = true;
                    break;
                }
            }
        }
        if !out.is_empty() && (tls.write_all(&out).await.is_err() || tls.flush().await.is_err()) {
            return;
        }
        if close {
            let _ = tls.shutdown().await;
            return;
        }
        if buf.is_empty() && buf.capacity() > 1024 {
            buf = Vec::new();
        }
        buf.reserve(256);
        match tls.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Answers `stats` lines on stdin until stdin closes (or SIGTERM).
async fn control(stats: impl Fn() -> serde_json::Value) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line,
            _ = async {
                match term.as_mut() {
                    Some(t) => t.recv().await,
                    None => std::future::pending().await,
                }
            } => return,
        };
        match line {
            Ok(Some(l)) if l.trim() == "stats" => println!("{}", stats()),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}
