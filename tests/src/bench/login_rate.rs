//! Figure 1: logins per second, chatr-server against a bare tokio-rustls loop.
//!
//! One login = TCP connect + TLS 1.3 handshake (full, no resumption) + version-2
//! PacketConnect (signature over the channel-binding exporter) + the server's
//! PacketConnected, then a polite PacketDisconnect and close. `concurrency` workers
//! loop on that for `duration` (after a warm-up), from several loopback source
//! addresses. The bare baseline gets exactly the same client work (the client signs
//! and sends the same PacketConnect) and answers with a canned PacketConnected, so
//! the difference is what Chatr's login costs beyond TLS: lookup, ed25519 verify,
//! hub claim, session task, ping timer, and the teardown.
//!
//! Both servers run as child processes side by side and are measured in
//! alternating windows (chatr, bare, bare, chatr, …) so that drift on a shared
//! machine hits both. Two ratios are reported: wall-clock logins/s (what a client
//! sees; on 2 shared cores the load generator competes with the server) and
//! logins per server CPU-second (from `/proc/<pid>/stat`; robust to the client).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::bench::BenchError;
use crate::bench::client::Conn;
use crate::bench::identity::{self, Identity};
use crate::bench::report::{Table, pct};
use crate::bench::serve::ServerKind;
use crate::bench::server::{ServerProcess, Workspace};
use crate::bench::stats::{Histogram, LatencySummary, median, ms};
use crate::bench::sys::{Machine, self_cpu_secs};

/// Options of `login-rate`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct LoginRateArgs {
    /// Measurement windows per server (the figure is their median).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Length of one window, seconds.
    #[arg(long, default_value_t = 3.0)]
    pub duration_secs: f64,
    /// Warm-up before each window, seconds.
    #[arg(long, default_value_t = 0.5)]
    pub warmup_secs: f64,
    /// Concurrent login loops.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Distinct identities cycled through (each must be logged out before reuse).
    #[arg(long, default_value_t = 20_000)]
    pub pool: usize,
    /// Loopback source addresses used (127.0.0.2 …).
    #[arg(long, default_value_t = 8)]
    pub source_ips: u8,
    /// Server log filter (`info` is what `chatr-server` logs by default).
    #[arg(long, default_value = "warn")]
    pub server_log: String,
}

/// One window on one server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Window {
    /// Which server.
    pub kind: ServerKind,
    /// Completed logins per second (wall clock).
    pub rate: f64,
    /// Server CPU per login, µs.
    pub server_cpu_us: f64,
    /// Load generator CPU per login, µs.
    pub client_cpu_us: f64,
    /// Failed logins in the window.
    pub failures: u64,
}

/// Medians of one server's windows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KindSummary {
    /// Which server.
    pub kind: ServerKind,
    /// Median logins/s.
    pub rate: f64,
    /// Median server CPU per login, µs.
    pub server_cpu_us: f64,
    /// Median client CPU per login, µs.
    pub client_cpu_us: f64,
    /// Failed logins over all windows (including warm-ups).
    pub failures: u64,
    /// Client-observed login latency (connect → PacketConnected), all windows.
    pub latency: Option<LatencySummary>,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// The figure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoginRateReport {
    /// Where and when.
    pub machine: Machine,
    /// Options used.
    pub args: LoginRateArgs,
    /// Every window, in order.
    pub windows: Vec<Window>,
    /// chatr-server.
    pub chatr: KindSummary,
    /// The baseline.
    pub bare: KindSummary,
    /// chatr logins/s ÷ bare logins/s.
    pub rate_ratio: f64,
    /// chatr logins per server CPU-second ÷ bare's.
    pub cpu_ratio: f64,
}

impl LoginRateReport {
    /// Markdown for `BENCHMARKS.md`.
    pub fn render(&self) -> String {
        let mut t = Table::new(&[
            "server",
            "logins/s (median)",
            "server CPU µs/login",
            "logins per server CPU-s",
            "client CPU µs/login",
            "login p50 ms",
            "login p99 ms",
            "failed",
        ]);
        for k in [&self.chatr, &self.bare] {
            let (p50, p99) = k
                .latency
                .map_or(("-".into(), "-".into()), |l| (ms(l.p50), ms(l.p99)));
            t.row(vec![
                k.kind.label().into(),
                format!("{:.0}", k.rate),
                format!("{:.0}", k.server_cpu_us),
                format!("{:.0}", 1e6 / k.server_cpu_us.max(1e-9)),
                format!("{:.0}", k.client_cpu_us),
                p50,
                p99,
                k.failures.to_string(),
            ]);
        }
        format!(
            "{}\nRatio chatr/bare: **{}** of the bare loop's logins/s (wall clock), **{}** of its logins per server CPU-second (target ≥ 90 %).\n",
            t.render(),
            pct(self.rate_ratio),
            pct(self.cpu_ratio)
        )
    }
}

/// State shared by the login workers of one server.
struct Load {
    identities: Arc<Vec<Identity>>,
    next: AtomicUsize,
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
    measuring: AtomicBool,
    latency: Histogram,
}

/// Runs `concurrency` login loops against `server` until `stop`.
async fn login_loop(
    load: Arc<Load>,
    server: std::net::SocketAddr,
    connector: tokio_rustls::TlsConnector,
    source_ips: u8,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let i = load.next.fetch_add(1, Ordering::Relaxed);
        let Some(id) = load.identities.get(i % load.identities.len().max(1)) else {
            return;
        };
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + (i % usize::from(source_ips.max(1))) as u8,
        ));
        let started = Instant::now();
        let attempt = async {
            let mut conn = Conn::connect(Some(source), server, &connector).await?;
            conn.login(id).await?;
            Ok::<Conn, BenchError>(conn)
        };
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(15), attempt) => r,
        };
        match result {
            Ok(Ok(conn)) => {
                if load.measuring.load(Ordering::Relaxed) {
                    load.latency.record(started.elapsed());
                }
                load.ok.fetch_add(1, Ordering::Relaxed);
                conn.goodbye().await;
            }
            Ok(Err(e)) => load.fail(e.to_string()),
            Err(_) => load.fail("login did not finish within 15 s".into()),
        }
    }
}

impl Load {
    fn fail(&self, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        first.get_or_insert(error);
    }
}

/// One measured window against `server`.
async fn window(
    server: &ServerProcess,
    load: &Arc<Load>,
    connector: &tokio_rustls::TlsConnector,
    args: &LoginRateArgs,
) -> Result<Window, BenchError> {
    let stop = CancellationToken::new();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            tokio::spawn(login_loop(
                Arc::clone(load),
                server.addr(),
                connector.clone(),
                args.source_ips,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_secs)).await;
    let failed0 = load.failed.load(Ordering::Relaxed);
    let ok0 = load.ok.load(Ordering::Relaxed);
    let s0 = server.sample()?;
    let c0 = self_cpu_secs();
    load.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(args.duration_secs)).await;
    load.measuring.store(false, Ordering::Relaxed);
    let ok1 = load.ok.load(Ordering::Relaxed);
    let s1 = server.sample()?;
    let c1 = self_cpu_secs();
    let failed1 = load.failed.load(Ordering::Relaxed);
    stop.cancel();
    for w in workers {
        let _ = w.await;
    }
    let logins = ok1.saturating_sub(ok0).max(1) as f64;
    let wall = s1.at.duration_since(s0.at).as_secs_f64();
    Ok(Window {
        kind: server.kind(),
        rate: ok1.saturating_sub(ok0) as f64 / wall,
        server_cpu_us: s1.cpu_secs_since(&s0) * 1e6 / logins,
        client_cpu_us: (c1 - c0) * 1e6 / logins,
        failures: failed1 - failed0,
    })
}

fn summarize(kind: ServerKind, windows: &[Window], load: &Load) -> KindSummary {
    let mine: Vec<&Window> = windows.iter().filter(|w| w.kind == kind).collect();
    let pick = |f: fn(&Window) -> f64| {
        median(&mine.iter().map(|w| f(w)).collect::<Vec<_>>()).unwrap_or(0.0)
    };
    KindSummary {
        kind,
        rate: pick(|w| w.rate),
        server_cpu_us: pick(|w| w.server_cpu_us),
        client_cpu_us: pick(|w| w.client_cpu_us),
        failures: load.failed.load(Ordering::Relaxed),
        latency: load.latency.summary(),
        first_error: load
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
    }
}

/// Runs figure 1.
pub async fn run(args: &LoginRateArgs) -> Result<LoginRateReport, BenchError> {
    let machine = Machine::detect();
    let ws = Workspace::new()?;
    let identities = Arc::new(Identity::derive_many(0x1061, args.pool.max(1)));
    let ids_file = ws.path().join("identities.bin");
    identity::write_public(&ids_file, &identities)?;
    let connector = ws.cert.connector()?;

    let mut chatr_spec = ws.spec(ServerKind::Chatr, Some(ids_file));
    chatr_spec.log = args.server_log.clone();
    let chatr = ServerProcess::start(&chatr_spec).await?;
    let bare = ServerProcess::start(&ws.spec(ServerKind::Bare, None)).await?;
    let new_load = || {
        Arc::new(Load {
            identities: Arc::clone(&identities),
            next: AtomicUsize::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_error: std::sync::Mutex::new(None),
            measuring: AtomicBool::new(false),
            latency: Histogram::new(),
        })
    };
    let chatr_load = new_load();
    let bare_load = new_load();

    let mut windows = Vec::new();
    for run in 0..args.runs.max(1) {
        let order = if run % 2 == 0 {
            [(&chatr, &chatr_load), (&bare, &bare_load)]
        } else {
            [(&bare, &bare_load), (&chatr, &chatr_load)]
        };
        for (server, load) in order {
            let w = window(server, load, &connector, args).await?;
            eprintln!(
                "login-rate run {}: {:<18} {:>7.0} logins/s, server {:>5.0} µs CPU/login, client {:>5.0} µs, {} failed",
                run + 1,
                w.kind.label(),
                w.rate,
                w.server_cpu_us,
                w.client_cpu_us,
                w.failures
            );
            windows.push(w);
        }
    }
    chatr.stop(Duration::from_secs(10)).await;
    bare.stop(Duration::from_secs(10)).await;

    let chatr_sum = summarize(ServerKind::Chatr, &windows, &chatr_load);
    let bare_sum = summarize(ServerKind::Bare, &windows, &bare_load);
    let rate_ratio = chatr_sum.rate / bare_sum.rate.max(1e-9);
    let cpu_ratio = bare_sum.server_cpu_us / chatr_sum.server_cpu_us.max(1e-9);
    Ok(LoginRateReport {
        machine,
        args: args.clone(),
        windows,
        chatr: chatr_sum,
        bare: bare_sum,
        rate_ratio,
        cpu_ratio,
    })
}
