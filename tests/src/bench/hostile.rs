//! `hostile`: the larger versions of the issue-16 attack tests, with figures.
//!
//! Three scenarios, each beside its baseline measured in the same run:
//!
//! * **memory**: `clients` sessions log in and all close, twice. Server RSS
//!   before, at the peak and 1, 5, 10, 30 s after the last close. The figure is
//!   what the allocator gives back; a second wave that adds nothing shows it is
//!   not a leak. Which allocator is measured is a build choice of `chatr-bench`
//!   (`--features jemalloc` / `mimalloc`, glibc otherwise; `--malloc-trim-ms`
//!   adds glibc trimming). The ramp's logins/s and login p99 give the
//!   throughput cost.
//! * **storm**: `storm_bursts` times, `storm_clients` TCP connects at once and
//!   one client logging in right behind them, against the default listen backlog
//!   and against std's 128 (the baseline: what the server had before).
//!   `TcpExt ListenOverflows` before/after (of the machine's network namespace:
//!   keep the machine quiet), the storm's connect times, and the login time of
//!   the client behind it; a dropped SYN costs its client a whole second.
//! * **api-flood**: `flood_sources` addresses each open `flood_per_source`
//!   body-less `PUT`s (`Content-Length: 1024`, no body), then legitimate
//!   `GET /healthz` requests from other addresses: the share answered 200 and
//!   their latency, beside the same requests without the attack.
//!
//! Loopback only; every loop is bounded in count and time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::bench::BenchError;
use crate::bench::client::Conn;
use crate::bench::identity::{self, Identity};
use crate::bench::report::Table;
use crate::bench::serve::ServerKind;
use crate::bench::server::{ServerProcess, Workspace};
use crate::bench::stats::{Histogram, LatencySummary, ms};
use crate::bench::sys::{Machine, allocator_name};

/// Which scenarios to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// RSS after load.
    Memory,
    /// Reconnect storm.
    Storm,
    /// Body-less PUTs against the REST API.
    ApiFlood,
}

/// Options of `hostile`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct HostileArgs {
    /// Scenarios (repeatable) [default: all].
    #[arg(long = "scenario", value_enum)]
    pub scenarios: Vec<Scenario>,
    /// memory: sessions per wave.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// memory: logins in flight.
    #[arg(long, default_value_t = 128)]
    pub ramp_concurrency: usize,
    /// memory: call glibc malloc_trim(0) in the server this often, ms.
    #[arg(long)]
    pub malloc_trim_ms: Option<u64>,
    /// storm: simultaneous TCP connects per burst.
    #[arg(long, default_value_t = 2000)]
    pub storm_clients: usize,
    /// storm: bursts per server (one login timed behind each).
    #[arg(long, default_value_t = 10)]
    pub storm_bursts: usize,
    /// storm: the backlog of the baseline run (std's).
    #[arg(long, default_value_t = 128)]
    pub baseline_backlog: u32,
    /// api-flood: attacking addresses.
    #[arg(long, default_value_t = 60)]
    pub flood_sources: u8,
    /// api-flood: body-less PUTs per address.
    #[arg(long, default_value_t = 18)]
    pub flood_per_source: usize,
    /// api-flood: legitimate requests measured (each run).
    #[arg(long, default_value_t = 200)]
    pub legit_requests: usize,
    /// Server log filter.
    #[arg(long, default_value = "error")]
    pub server_log: String,
}

/// RSS over one memory run, KiB.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemoryRun {
    /// Allocator of this build.
    pub allocator: String,
    /// glibc trim period, ms.
    pub malloc_trim_ms: Option<u64>,
    /// RSS before any connection.
    pub base_kib: u64,
    /// Per wave: peak RSS with every session logged in.
    pub peak_kib: Vec<u64>,
    /// Per wave: RSS 1, 5, 10 and 30 s after the last session closed.
    pub after_kib: Vec<[u64; 4]>,
    /// Per wave: logins per second during the ramp.
    pub logins_per_sec: Vec<f64>,
    /// Per wave: login latency.
    pub login: Vec<Option<LatencySummary>>,
    /// Failed logins, all waves.
    pub failures: u64,
}

/// One storm run (`storm_bursts` bursts against one server).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StormRun {
    /// Listen backlog of the server.
    pub backlog: u32,
    /// Whether this is the baseline (old) backlog.
    pub baseline: bool,
    /// `TcpExt ListenOverflows` during the bursts.
    pub overflows: u64,
    /// TCP connect time of the storm's connections.
    pub connect: Option<LatencySummary>,
    /// Storm connects that took a second or more (a SYN retransmission).
    pub connects_over_one_second: u64,
    /// Connect → PacketConnected of one client logging in right behind each burst.
    pub probe_login: Option<LatencySummary>,
    /// Failed connects and probe logins.
    pub failures: u64,
}

/// One api-flood run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FloodRun {
    /// Whether the attack was running.
    pub attacked: bool,
    /// Attack connections the server kept open.
    pub attack_held: usize,
    /// Legitimate requests answered 200.
    pub ok: usize,
    /// Legitimate requests sent.
    pub sent: usize,
    /// Their latency (answered ones).
    pub latency: Option<LatencySummary>,
}

/// Everything `hostile` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostileReport {
    /// Where and when.
    pub machine: Machine,
    /// Options used.
    pub args: HostileArgs,
    /// memory.
    pub memory: Option<MemoryRun>,
    /// storm: baseline and default.
    pub storm: Vec<StormRun>,
    /// api-flood: without and with the attack.
    pub flood: Vec<FloodRun>,
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

impl HostileReport {
    /// Markdown tables for `BENCHMARKS.md`.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Some(m) = &self.memory {
            let mut t = Table::new(&[
                "allocator",
                "wave",
                "RSS before MiB",
                "peak MiB",
                "+1 s",
                "+5 s",
                "+10 s",
                "+30 s",
                "logins/s",
                "login p99 ms",
            ]);
            let label = match m.malloc_trim_ms {
                Some(period) => format!("{} + malloc_trim every {period} ms", m.allocator),
                None => m.allocator.clone(),
            };
            for (wave, (peak, after)) in m.peak_kib.iter().zip(&m.after_kib).enumerate() {
                t.row(vec![
                    label.clone(),
                    (wave + 1).to_string(),
                    mib(m.base_kib),
                    mib(*peak),
                    mib(after[0]),
                    mib(after[1]),
                    mib(after[2]),
                    mib(after[3]),
                    format!("{:.0}", m.logins_per_sec.get(wave).copied().unwrap_or(0.0)),
                    m.login
                        .get(wave)
                        .copied()
                        .flatten()
                        .map_or("-".into(), |l| ms(l.p99)),
                ]);
            }
            out.push(t.render());
        }
        if !self.storm.is_empty() {
            let mut t = Table::new(&[
                "listen backlog",
                "ListenOverflows",
                "storm connect p50 ms",
                "storm connect max ms",
                "storm connects ≥ 1 s",
                "login behind the storm p50 ms",
                "login behind the storm max ms",
                "failed",
            ]);
            let opt = |l: &Option<LatencySummary>, f: fn(&LatencySummary) -> Duration| {
                l.as_ref().map_or("-".into(), |l| ms(f(l)))
            };
            for r in &self.storm {
                t.row(vec![
                    format!(
                        "{}{}",
                        r.backlog,
                        if r.baseline { " (baseline: std's)" } else { "" }
                    ),
                    r.overflows.to_string(),
                    opt(&r.connect, |l| l.p50),
                    opt(&r.connect, |l| l.max),
                    r.connects_over_one_second.to_string(),
                    opt(&r.probe_login, |l| l.p50),
                    opt(&r.probe_login, |l| l.max),
                    r.failures.to_string(),
                ]);
            }
            out.push(t.render());
        }
        if !self.flood.is_empty() {
            let mut t = Table::new(&[
                "API",
                "attack connections held",
                "legitimate answered 200",
                "p50 ms",
                "p99 ms",
            ]);
            for r in &self.flood {
                t.row(vec![
                    if r.attacked {
                        format!(
                            "under {} × {} body-less PUTs",
                            self.args.flood_sources, self.args.flood_per_source
                        )
                    } else {
                        "no attack (baseline)".into()
                    },
                    r.attack_held.to_string(),
                    format!("{} / {}", r.ok, r.sent),
                    r.latency.as_ref().map_or("-".into(), |l| ms(l.p50)),
                    r.latency.as_ref().map_or("-".into(), |l| ms(l.p99)),
                ]);
            }
            out.push(t.render());
        }
        out.join("\n\n")
    }
}

fn source(i: usize, third: u8, count: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, third, 1 + (i % count.max(1)) as u8))
}

/// Logs `ids` in with at most `concurrency` in flight; returns the sessions,
/// the latency histogram and the number of failures.
async fn login_wave(
    server: SocketAddr,
    connector: &TlsConnector,
    ids: &[Identity],
    concurrency: usize,
) -> (Vec<Conn>, Histogram, u64, Duration) {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let latency = Arc::new(Histogram::new());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().cloned().enumerate() {
        let gate = Arc::clone(&gate);
        let latency = Arc::clone(&latency);
        let connector = connector.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let begin = Instant::now();
            let login = async {
                let mut conn = Conn::connect(Some(source(i, 4, 16)), server, &connector).await?;
                conn.login(&id).await?;
                Ok::<Conn, BenchError>(conn)
            };
            let conn = tokio::time::timeout(Duration::from_secs(30), login)
                .await
                .ok()?
                .ok()?;
            latency.record(begin.elapsed());
            Some(conn)
        });
    }
    let mut conns = Vec::with_capacity(ids.len());
    let mut failures = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Some(conn)) => conns.push(conn),
            _ => failures += 1,
        }
    }
    let elapsed = started.elapsed();
    let latency = Arc::try_unwrap(latency).unwrap_or_default();
    (conns, latency, failures, elapsed)
}

async fn memory(ws: &Workspace, args: &HostileArgs) -> Result<MemoryRun, BenchError> {
    let ids = Identity::derive_many(0x4E4D, args.clients);
    let file = ws.path().join("memory-identities.bin");
    identity::write_public(&file, &ids)?;
    let mut spec = ws.spec(ServerKind::Chatr, Some(file));
    spec.log = args.server_log.clone();
    spec.malloc_trim_ms = args.malloc_trim_ms;
    let server = ServerProcess::start(&spec).await?;
    let connector = ws.cert.connector()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = server.sample()?.rss_kib;
    let mut run = MemoryRun {
        allocator: allocator_name().into(),
        malloc_trim_ms: args.malloc_trim_ms,
        base_kib: base,
        peak_kib: Vec::new(),
        after_kib: Vec::new(),
        logins_per_sec: Vec::new(),
        login: Vec::new(),
        failures: 0,
    };
    for wave in 0..2 {
        let (conns, latency, failures, elapsed) =
            login_wave(server.addr(), &connector, &ids, args.ramp_concurrency).await;
        run.failures += failures;
        run.logins_per_sec
            .push(conns.len() as f64 / elapsed.as_secs_f64().max(1e-9));
        run.login.push(latency.summary());
        run.peak_kib.push(server.sample()?.rss_kib);
        // Everyone leaves at once (PacketDisconnect, close).
        let mut closing = tokio::task::JoinSet::new();
        for conn in conns {
            closing.spawn(conn.goodbye());
        }
        while closing.join_next().await.is_some() {}
        let closed = Instant::now();
        let mut after = [0u64; 4];
        for (slot, at) in after.iter_mut().zip([1u64, 5, 10, 30]) {
            let due = closed + Duration::from_secs(at);
            tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
            *slot = server.sample()?.rss_kib;
        }
        eprintln!(
            "hostile memory ({}): wave {}: base {} MiB, peak {} MiB, after {:?} KiB",
            allocator_name(),
            wave + 1,
            mib(base),
            mib(run.peak_kib.last().copied().unwrap_or(0)),
            after
        );
        run.after_kib.push(after);
    }
    server.stop(Duration::from_secs(30)).await;
    Ok(run)
}

/// `TcpExt ListenOverflows` of this network namespace.
fn listen_overflows() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/netstat") else {
        return 0;
    };
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn storm_once(
    ws: &Workspace,
    args: &HostileArgs,
    ids_file: &std::path::Path,
    ids: &[Identity],
    backlog: Option<u32>,
) -> Result<StormRun, BenchError> {
    let mut spec = ws.spec(ServerKind::Chatr, Some(ids_file.to_path_buf()));
    spec.log = args.server_log.clone();
    spec.listen_backlog = backlog;
    let server = ServerProcess::start(&spec).await?;
    let addr = server.addr();
    let connector = ws.cert.connector()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connects = Histogram::new();
    let probes = Histogram::new();
    let mut failures = 0;
    let before = listen_overflows();
    for (burst, id) in ids.iter().enumerate().take(args.storm_bursts) {
        // The storm: every TCP connect at once, from 40 addresses (50 each at
        // 2 000, under the per-address cap); join_all sends every SYN in one pass.
        let sockets: Vec<TcpSocket> = (0..args.storm_clients)
            .filter_map(|i| {
                let socket = TcpSocket::new_v4().ok()?;
                socket.bind(SocketAddr::new(source(i, 7, 40), 0)).ok()?;
                Some(socket)
            })
            .collect();
        let started = Instant::now();
        let storm = tokio::spawn(futures_util::future::join_all(sockets.into_iter().map(
            |socket| async move {
                let ok = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr)).await;
                (started.elapsed(), ok)
            },
        )));
        // A client logging in right behind the storm: what a reconnect storm costs
        // everyone else (the 1.02 s was a dropped SYN retransmitted).
        tokio::time::sleep(Duration::from_millis(2)).await;
        let probe_started = Instant::now();
        let probe = async {
            let mut conn = Conn::connect(Some(source(burst, 8, 200)), addr, &connector).await?;
            conn.login(id).await?;
            Ok::<Conn, BenchError>(conn)
        };
        match tokio::time::timeout(Duration::from_secs(30), probe).await {
            Ok(Ok(conn)) => {
                probes.record(probe_started.elapsed());
                conn.goodbye().await;
            }
            _ => failures += 1,
        }
        let results = storm
            .await
            .map_err(|e| BenchError::Server(format!("storm task: {e}")))?;
        for (took, connected) in &results {
            if matches!(connected, Ok(Ok(_))) {
                connects.record(*took);
            } else {
                failures += 1;
            }
        }
        drop(results);
        // Let the server close the storm's connections before the next burst.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let overflows = listen_overflows().saturating_sub(before);
    server.stop(Duration::from_secs(30)).await;
    Ok(StormRun {
        backlog: backlog.unwrap_or(chatr_server::Limits::default().listen_backlog),
        baseline: backlog.is_some(),
        overflows,
        connects_over_one_second: latency_at_least(&connects, Duration::from_secs(1)),
        connect: connects.summary(),
        probe_login: probes.summary(),
        failures,
    })
}

/// How many samples of `h` are at least `bound` (from its quantiles).
fn latency_at_least(h: &Histogram, bound: Duration) -> u64 {
    let total = h.count();
    if total == 0 {
        return 0;
    }
    // Walk the quantiles in 0.1 % steps: precise enough for a table.
    let below = (0..=1000)
        .map(|i| f64::from(i) / 1000.0)
        .take_while(|q| h.quantile(*q).is_some_and(|v| v < bound))
        .last()
        .unwrap_or(0.0);
    ((1.0 - below) * total as f64).round() as u64
}

async fn storm(ws: &Workspace, args: &HostileArgs) -> Result<Vec<StormRun>, BenchError> {
    let ids = Identity::derive_many(0x5707, args.storm_bursts);
    let file = ws.path().join("storm-identities.bin");
    identity::write_public(&file, &ids)?;
    let mut runs = Vec::new();
    for backlog in [Some(args.baseline_backlog), None] {
        let run = storm_once(ws, args, &file, &ids, backlog).await?;
        eprintln!("hostile storm: {run:?}");
        runs.push(run);
    }
    Ok(runs)
}

async fn tls_from(
    source: IpAddr,
    addr: SocketAddr,
    connector: &TlsConnector,
) -> std::io::Result<TlsStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(addr).await?;
    connector
        .connect(crate::bench::tls::server_name(), tcp)
        .await
}

/// One legitimate `GET /healthz` on a fresh connection: its latency if answered 200.
async fn legit_request(
    source: IpAddr,
    addr: SocketAddr,
    connector: &TlsConnector,
) -> Option<Duration> {
    let started = Instant::now();
    let attempt = async {
        let mut tls = tls_from(source, addr, connector).await.ok()?;
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        answer
            .starts_with(b"HTTP/1.1 200")
            .then(|| started.elapsed())
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .ok()?
}

async fn flood_once(
    ws: &Workspace,
    args: &HostileArgs,
    attacked: bool,
) -> Result<FloodRun, BenchError> {
    let mut spec = ws.spec(ServerKind::Chatr, None);
    spec.log = args.server_log.clone();
    let server = ServerProcess::start(&spec).await?;
    let api = server.api_addr().ok_or_else(|| {
        BenchError::Server("the server child did not say where its API is".into())
    })?;
    let connector = ws.cert.connector()?;
    let mut held = Vec::new();
    if attacked {
        let put = format!(
            "PUT /api/1/clients/{} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Chatr-PublicKey-Signature: AAAA\r\nContent-Length: 1024\r\n\r\n",
            uuid::Uuid::new_v4()
        );
        for s in 0..usize::from(args.flood_sources) {
            for _ in 0..args.flood_per_source {
                let from = source(s, 5, usize::from(args.flood_sources));
                let open =
                    tokio::time::timeout(Duration::from_secs(5), tls_from(from, api, &connector))
                        .await;
                if let Ok(Ok(mut tls)) = open
                    && tls.write_all(put.as_bytes()).await.is_ok()
                {
                    held.push(tls);
                }
            }
        }
    }
    let histogram = Histogram::new();
    let mut ok = 0;
    // Legitimate users: many addresses, so the rate limit does not count here.
    for i in 0..args.legit_requests {
        if let Some(latency) = legit_request(source(i, 6, 200), api, &connector).await {
            ok += 1;
            histogram.record(latency);
        }
    }
    let attack_held = held.len();
    drop(held);
    server.stop(Duration::from_secs(30)).await;
    Ok(FloodRun {
        attacked,
        attack_held,
        ok,
        sent: args.legit_requests,
        latency: histogram.summary(),
    })
}

/// Runs the chosen scenarios.
pub async fn run(args: &HostileArgs) -> Result<HostileReport, BenchError> {
    let machine = Machine::detect();
    let ws = Workspace::new()?;
    let all = args.scenarios.is_empty();
    let wants = |s: Scenario| all || args.scenarios.contains(&s);
    let memory = if wants(Scenario::Memory) {
        Some(memory(&ws, args).await?)
    } else {
        None
    };
    let storm = if wants(Scenario::Storm) {
        storm(&ws, args).await?
    } else {
        Vec::new()
    };
    let mut flood = Vec::new();
    if wants(Scenario::ApiFlood) {
        for attacked in [false, true] {
            let run = flood_once(&ws, args, attacked).await?;
            eprintln!("hostile api-flood: {run:?}");
            flood.push(run);
        }
    }
    Ok(HostileReport {
        machine,
        args: args.clone(),
        memory,
        storm,
        flood,
    })
}
