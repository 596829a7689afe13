//! Figure 2: how many authenticated clients one server holds, and what each costs.
//!
//! The load generator ramps to `clients` sessions (at most `ramp_concurrency`
//! logins in flight), each from one of several loopback source addresses
//! (127.0.0.2, 127.0.0.3, …; bound before connect with `IP_BIND_ADDRESS_NO_PORT`,
//! so the 4-tuple, not the source port, must be unique). Every session answers
//! every PacketPing at once, at the spec's default timings (ping 5 s after the last
//! pong, "Time out" 15 s after an unanswered ping) unless overridden. After a settle
//! period the steady window is measured:
//!
//! * **RSS per client**: (server RSS at the end of the window − RSS before the first
//!   connection, identities already loaded) ÷ sessions held.
//! * **CPU**: server user+system time over the window, % of one core.
//! * **Round trip under load** (`probe RTT`): `probes` extra sessions each send a
//!   PacketConnectionRequest for an offline UUID a few times a second and time the
//!   PacketConnectionRequestDenied: one client → server → client trip through the
//!   session task, the hub and back, while the server carries the full load. (A
//!   client cannot time the server's ping round trip itself: only the server knows
//!   when it sent the ping.)
//! * **Ping lateness**: on every client, ping arrival − (own pong + ping interval):
//!   how late the server's ping schedule runs under load (one round trip + timer slack).
//! * **Lost**: sessions that ended before the end of the run (PacketDisconnect
//!   "Time out", close, error), and logins that failed.
//!
//! The baseline is the bare tokio-rustls loop holding the same number of idle TLS
//! connections (it never pings; probes get their frame echoed).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatr_proto::{Packet, PacketConnectionRequest, PacketPong};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::bench::BenchError;
use crate::bench::client::Conn;
use crate::bench::identity::{self, Identity};
use crate::bench::report::Table;
use crate::bench::serve::ServerKind;
use crate::bench::server::{ServerProcess, Workspace};
use crate::bench::stats::{Histogram, LatencySummary, median, median_duration, ms};
use crate::bench::sys::Machine;

/// Options of `concurrent`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct ConcurrentArgs {
    /// Sessions to hold.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Runs per server (figures are medians).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Logins in flight during the ramp.
    #[arg(long, default_value_t = 128)]
    pub ramp_concurrency: usize,
    /// Loopback source addresses (127.0.0.2 …).
    #[arg(long, default_value_t = 16)]
    pub source_ips: u8,
    /// Wait after the ramp before measuring, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub settle_secs: f64,
    /// Steady-state window, seconds (longer than the ping timeout, so a session
    /// that stops being served is seen lost).
    #[arg(long, default_value_t = 30.0)]
    pub steady_secs: f64,
    /// Probe sessions timing request → denied round trips.
    #[arg(long, default_value_t = 32)]
    pub probes: usize,
    /// Requests per second per probe session (the server allows 10/s).
    #[arg(long, default_value_t = 4.0)]
    pub probe_rate: f64,
    /// Server ping interval, ms [default: spec, 5000].
    #[arg(long)]
    pub ping_interval_ms: Option<u64>,
    /// Server ping timeout, ms [default: spec, 15000].
    #[arg(long)]
    pub ping_timeout_ms: Option<u64>,
    /// Skip the bare baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Server log filter.
    #[arg(long, default_value = "warn")]
    pub server_log: String,
}

/// One run on one server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConcurrentRun {
    /// Which server.
    pub kind: ServerKind,
    /// Sessions logged in at the end of the ramp.
    pub held: u64,
    /// Logins that failed.
    pub login_failures: u64,
    /// Sessions lost after login (any reason), until the end of the window.
    pub lost: u64,
    /// Of those, lost with PacketDisconnect "Time out".
    pub lost_timeout: u64,
    /// Ramp duration, s.
    pub ramp_secs: f64,
    /// Server RSS before the first connection, KiB.
    pub rss_base_kib: u64,
    /// Server RSS at the end of the window, KiB.
    pub rss_kib: u64,
    /// (rss − base) ÷ held, KiB.
    pub rss_per_client_kib: f64,
    /// Server CPU over the window, % of one core.
    pub cpu_percent: f64,
    /// Sessions the server counted online at the end of the window.
    pub server_online: u64,
    /// Probe round trips.
    pub probe_rtt: Option<LatencySummary>,
    /// Probe requests with no answer within 5 s.
    pub probe_failures: u64,
    /// Ping lateness.
    pub ping_lateness: Option<LatencySummary>,
    /// The first error seen.
    pub first_error: Option<String>,
}

/// Medians of one server's runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConcurrentSummary {
    /// Which server.
    pub kind: ServerKind,
    /// Median sessions held.
    pub held: f64,
    /// Median RSS per client, KiB.
    pub rss_per_client_kib: f64,
    /// Median CPU %, one core = 100.
    pub cpu_percent: f64,
    /// Median probe p50.
    pub probe_p50: Option<Duration>,
    /// Median probe p99.
    pub probe_p99: Option<Duration>,
    /// Largest probe RTT over the runs.
    pub probe_max: Option<Duration>,
    /// Median ping-lateness p99.
    pub lateness_p99: Option<Duration>,
    /// Failed logins, all runs.
    pub login_failures: u64,
    /// Lost sessions, all runs.
    pub lost: u64,
    /// Median ramp rate, logins/s.
    pub ramp_rate: f64,
}

/// The figure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConcurrentReport {
    /// Where and when.
    pub machine: Machine,
    /// Options used.
    pub args: ConcurrentArgs,
    /// Every run.
    pub runs: Vec<ConcurrentRun>,
    /// Per server.
    pub summaries: Vec<ConcurrentSummary>,
}

impl ConcurrentReport {
    /// Markdown for `BENCHMARKS.md`.
    pub fn render(&self) -> String {
        let mut t = Table::new(&[
            "server",
            "sessions held",
            "RSS/client KiB",
            "CPU steady (% of 1 core)",
            "probe RTT p50 ms",
            "probe RTT p99 ms",
            "probe max ms",
            "ping lateness p99 ms",
            "failed logins",
            "lost sessions",
            "ramp logins/s",
        ]);
        let opt = |d: Option<Duration>| d.map_or("-".to_string(), ms);
        for s in &self.summaries {
            t.row(vec![
                s.kind.label().into(),
                format!("{:.0}", s.held),
                format!("{:.1}", s.rss_per_client_kib),
                format!("{:.1}", s.cpu_percent),
                opt(s.probe_p50),
                opt(s.probe_p99),
                opt(s.probe_max),
                opt(s.lateness_p99),
                s.login_failures.to_string(),
                s.lost.to_string(),
                format!("{:.0}", s.ramp_rate),
            ]);
        }
        t.render()
    }

    /// Whether every chatr session logged in and stayed.
    pub fn all_held(&self) -> bool {
        self.runs
            .iter()
            .filter(|r| r.kind == ServerKind::Chatr)
            .all(|r| r.login_failures == 0 && r.lost == 0 && r.held as usize == self.args.clients)
    }
}

#[derive(Default)]
struct Counters {
    held: AtomicU64,
    login_failures: AtomicU64,
    lost: AtomicU64,
    lost_timeout: AtomicU64,
    probe_failures: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
    /// Set once the steady window starts: ping lateness and probes count from then.
    measuring: AtomicBool,
    lateness: Histogram,
    probe_rtt: Histogram,
}

impl Counters {
    fn error(&self, e: String) {
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        first.get_or_insert(e);
    }
}

fn source_ip(i: usize, count: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        2 + (i % usize::from(count.max(1))) as u8,
    ))
}

/// Logs in, then answers pings until `stop`; counts what happens.
async fn hold_session(
    ctx: Arc<RunCtx>,
    source: IpAddr,
    id: Identity,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let RunCtx {
        server,
        connector,
        interval,
        counters,
        stop,
    } = &*ctx;
    let (server, interval) = (*server, *interval);
    let login = async {
        let mut conn = Conn::connect(Some(source), server, connector).await?;
        conn.login(&id).await?;
        Ok::<Conn, BenchError>(conn)
    };
    let mut conn = match tokio::time::timeout(Duration::from_secs(60), login).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            counters.login_failures.fetch_add(1, Ordering::Relaxed);
            counters.error(format!("login: {e}"));
            return;
        }
        Err(_) => {
            counters.login_failures.fetch_add(1, Ordering::Relaxed);
            counters.error("login: no PacketConnected within 60 s".into());
            return;
        }
    };
    // Count before giving the permit back: the ramp ends when all permits are back.
    counters.held.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    let mut last = Instant::now();
    loop {
        let packet = tokio::select! {
            () = stop.cancelled() => return,
            p = conn.recv() => p,
        };
        match packet {
            Ok(Some(Packet::Ping(ping))) => {
                let now = Instant::now();
                if counters.measuring.load(Ordering::Relaxed) {
                    counters
                        .lateness
                        .record(now.saturating_duration_since(last + interval));
                }
                if let Err(e) = conn
                    .send(&Packet::Pong(PacketPong {
                        ping_id: ping.ping_id,
                    }))
                    .await
                {
                    lost(counters, format!("pong: {e}"), false);
                    return;
                }
                last = Instant::now();
            }
            Ok(Some(Packet::Disconnect(d))) => {
                let timeout = d.reason() == Some(chatr_proto::DisconnectReason::TimeOut);
                lost(
                    counters,
                    format!("server disconnected: {:?}", d.message),
                    timeout,
                );
                return;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                lost(counters, "server closed the connection".into(), false);
                return;
            }
            Err(e) => {
                lost(counters, e.to_string(), false);
                return;
            }
        }
    }
}

/// What every session task of one run shares.
struct RunCtx {
    server: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    interval: Duration,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

fn lost(counters: &Counters, why: String, timeout: bool) {
    counters.lost.fetch_add(1, Ordering::Relaxed);
    if timeout {
        counters.lost_timeout.fetch_add(1, Ordering::Relaxed);
    }
    counters.error(why);
}

/// A probe session: request → denied round trips, answering pings in between.
async fn probe_session(
    server: SocketAddr,
    id: Identity,
    connector: tokio_rustls::TlsConnector,
    rate: f64,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut conn = match Conn::connect(None, server, &connector).await {
        Ok(c) => c,
        Err(e) => {
            counters.error(format!("probe connect: {e}"));
            counters.probe_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if let Err(e) = conn.login(&id).await {
        counters.error(format!("probe login: {e}"));
        counters.probe_failures.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let period = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let offline = Uuid::new_v4();
    let endpoint = conn.endpoint();
    let mut pending: Option<Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                if let Some(sent) = pending
                    && sent.elapsed() > Duration::from_secs(5)
                {
                    counters.probe_failures.fetch_add(1, Ordering::Relaxed);
                    pending = None;
                }
                if pending.is_none() {
                    let request = Packet::ConnectionRequest(PacketConnectionRequest {
                        uuid: offline,
                        private_endpoint: endpoint,
                    hints: None,
                    });
                    pending = Some(Instant::now());
                    if conn.send(&request).await.is_err() {
                        counters.probe_failures.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            p = conn.recv() => match p {
                Ok(Some(Packet::Ping(ping))) => {
                    if conn.send(&Packet::Pong(PacketPong { ping_id: ping.ping_id })).await.is_err() {
                        return;
                    }
                }
                // chatr answers Denied(offline); the bare loop echoes the request.
                Ok(Some(Packet::ConnectionRequestDenied(_) | Packet::ConnectionRequest(_))) => {
                    if let Some(sent) = pending.take()
                        && counters.measuring.load(Ordering::Relaxed)
                    {
                        counters.probe_rtt.record(sent.elapsed());
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    counters.probe_failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

async fn one_run(
    kind: ServerKind,
    ws: &Workspace,
    ids_file: &std::path::Path,
    identities: &Arc<Vec<Identity>>,
    args: &ConcurrentArgs,
) -> Result<ConcurrentRun, BenchError> {
    let mut spec = ws.spec(kind, Some(ids_file.to_path_buf()));
    spec.ping_interval_ms = args.ping_interval_ms;
    spec.ping_timeout_ms = args.ping_timeout_ms;
    spec.log = args.server_log.clone();
    let mut server = ServerProcess::start(&spec).await?;
    let connector = ws.cert.connector()?;
    let interval = Duration::from_millis(args.ping_interval_ms.unwrap_or(5_000));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = server.sample()?;

    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let ramp = Arc::new(Semaphore::new(args.ramp_concurrency.max(1)));
    let ctx = Arc::new(RunCtx {
        server: server.addr(),
        connector: connector.clone(),
        interval,
        counters: Arc::clone(&counters),
        stop: stop.clone(),
    });
    let ramp_start = Instant::now();
    for (i, id) in identities.iter().take(args.clients).enumerate() {
        let permit = Arc::clone(&ramp)
            .acquire_owned()
            .await
            .map_err(|_| BenchError::Server("ramp semaphore closed".into()))?;
        tracker.spawn(hold_session(
            Arc::clone(&ctx),
            source_ip(i, args.source_ips),
            id.clone(),
            permit,
        ));
        if i % 10_000 == 9_999 {
            eprintln!(
                "concurrent: {} {} logins started, {} held, {} failed",
                kind.label(),
                i + 1,
                counters.held.load(Ordering::Relaxed),
                counters.login_failures.load(Ordering::Relaxed)
            );
        }
    }
    // Every login has finished (held or failed) once all permits are back.
    let _all = ramp
        .acquire_many(u32::try_from(args.ramp_concurrency.max(1)).unwrap_or(u32::MAX))
        .await
        .map_err(|_| BenchError::Server("ramp semaphore closed".into()))?;
    let ramp_secs = ramp_start.elapsed().as_secs_f64();
    let held = counters.held.load(Ordering::Relaxed);
    eprintln!(
        "concurrent: {} ramp done in {ramp_secs:.1} s: {held} held, {} failed",
        kind.label(),
        counters.login_failures.load(Ordering::Relaxed)
    );

    for p in 0..args.probes {
        let Some(id) = identities.get(args.clients + p) else {
            break;
        };
        tracker.spawn(probe_session(
            server.addr(),
            id.clone(),
            connector.clone(),
            args.probe_rate,
            Arc::clone(&counters),
            stop.clone(),
        ));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    let s0 = server.sample()?;
    counters.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(args.steady_secs)).await;
    counters.measuring.store(false, Ordering::Relaxed);
    let s1 = server.sample()?;
    let stats = server.stats().await?;

    stop.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(60), tracker.wait()).await;
    server.stop(Duration::from_secs(30)).await;

    let run = ConcurrentRun {
        kind,
        held,
        login_failures: counters.login_failures.load(Ordering::Relaxed),
        lost: counters.lost.load(Ordering::Relaxed),
        lost_timeout: counters.lost_timeout.load(Ordering::Relaxed),
        ramp_secs,
        rss_base_kib: base.rss_kib,
        rss_kib: s1.rss_kib,
        rss_per_client_kib: s1.rss_kib.saturating_sub(base.rss_kib) as f64 / held.max(1) as f64,
        cpu_percent: s1.cpu_percent_since(&s0),
        server_online: stats.online,
        probe_rtt: counters.probe_rtt.summary(),
        probe_failures: counters.probe_failures.load(Ordering::Relaxed),
        ping_lateness: counters.lateness.summary(),
        first_error: counters
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
    };
    eprintln!(
        "concurrent: {} held {} (server says {} online), {:.1} KiB/client, CPU {:.1} %, probe p99 {}, lost {}, failed {}{}",
        kind.label(),
        run.held,
        run.server_online,
        run.rss_per_client_kib,
        run.cpu_percent,
        run.probe_rtt.map_or("-".into(), |l| ms(l.p99)),
        run.lost,
        run.login_failures,
        run.first_error
            .as_ref()
            .map_or(String::new(), |e| format!(" (first error: {e})"))
    );
    Ok(run)
}

fn summarize(kind: ServerKind, runs: &[ConcurrentRun]) -> Option<ConcurrentSummary> {
    let mine: Vec<&ConcurrentRun> = runs.iter().filter(|r| r.kind == kind).collect();
    if mine.is_empty() {
        return None;
    }
    let pick = |f: &dyn Fn(&ConcurrentRun) -> f64| {
        median(&mine.iter().map(|r| f(r)).collect::<Vec<_>>()).unwrap_or(0.0)
    };
    let lat = |f: &dyn Fn(&ConcurrentRun) -> Option<Duration>| {
        let v: Vec<Duration> = mine.iter().filter_map(|r| f(r)).collect();
        if v.is_empty() {
            None
        } else {
            median_duration(v)
        }
    };
    Some(ConcurrentSummary {
        kind,
        held: pick(&|r| r.held as f64),
        rss_per_client_kib: pick(&|r| r.rss_per_client_kib),
        cpu_percent: pick(&|r| r.cpu_percent),
        probe_p50: lat(&|r| r.probe_rtt.map(|l| l.p50)),
        probe_p99: lat(&|r| r.probe_rtt.map(|l| l.p99)),
        probe_max: mine.iter().filter_map(|r| r.probe_rtt.map(|l| l.max)).max(),
        lateness_p99: lat(&|r| r.ping_lateness.map(|l| l.p99)),
        login_failures: mine.iter().map(|r| r.login_failures).sum(),
        lost: mine.iter().map(|r| r.lost).sum(),
        ramp_rate: pick(&|r| r.held as f64 / r.ramp_secs.max(1e-9)),
    })
}

/// Runs figure 2.
pub async fn run(args: &ConcurrentArgs) -> Result<ConcurrentReport, BenchError> {
    let machine = Machine::detect();
    let ws = Workspace::new()?;
    let identities = Arc::new(Identity::derive_many(0xC0C0, args.clients + args.probes));
    let ids_file = ws.path().join("identities.bin");
    identity::write_public(&ids_file, &identities)?;
    let mut runs = Vec::new();
    for run in 0..args.runs.max(1) {
        let kinds: &[ServerKind] = match (args.no_baseline, run % 2) {
            (true, _) => &[ServerKind::Chatr],
            (false, 0) => &[ServerKind::Chatr, ServerKind::Bare],
            (false, _) => &[ServerKind::Bare, ServerKind::Chatr],
        };
        for &kind in kinds {
            eprintln!(
                "concurrent: run {} of {}: {}",
                run + 1,
                args.runs,
                kind.label()
            );
            runs.push(one_run(kind, &ws, &ids_file, &identities, args).await?);
        }
    }
    let summaries = [ServerKind::Chatr, ServerKind::Bare]
        .into_iter()
        .filter_map(|k| summarize(k, &runs))
        .collect();
    Ok(ConcurrentReport {
        machine,
        args: args.clone(),
        runs,
        summaries,
    })
}
