//! Figure 3: brokering latency at fixed rates.
//!
//! `pairs` pairs of sessions (A, B) are logged in first. An open-loop generator then
//! starts exchanges at exactly `rate` per second for `duration` (pair k mod P takes
//! exchange k, so each pair stays far below the server's per-session request limit).
//! One exchange, as in the spec: A sends PacketConnectionRequest(B); the server
//! forwards it to B; B answers PacketConnectionRequestAccept(A) at once; the server
//! sends A the Accept and a PacketClientInfo, and B a PacketClientInfo. **Latency =
//! from A's request write to the later of the two ClientInfo arrivals.** The
//! generator's own lateness (request write − scheduled time) is reported as `lag`,
//! so a load generator that falls behind is visible instead of hiding latency.
//!
//! An exchange counts as an error if it is denied, gets no answer within 5 s,
//! or is still running when its pair's next exchange is due; a rate is **held**
//! when every exchange of every run completed without error.
//!
//! Baseline, same run, same number of TLS connections, same rate: the bare
//! tokio-rustls loop echoing the same frames: A's request is echoed to A, then B
//! sends its accept and it is echoed to B: the two sequential client → server →
//! client trips that brokering needs at the very least, without any brokering.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatr_proto::{Packet, PacketConnectionRequest, PacketConnectionRequestAccept, PacketPong};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bench::BenchError;
use crate::bench::client::Conn;
use crate::bench::identity::{self, Identity};
use crate::bench::report::Table;
use crate::bench::serve::ServerKind;
use crate::bench::server::{ServerProcess, Workspace};
use crate::bench::stats::{Histogram, LatencySummary, median, median_duration, ms};
use crate::bench::sys::Machine;

/// An exchange with no answer after this is an error.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `broker`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct BrokerArgs {
    /// Exchanges (pairs) per second; repeat for several rates.
    #[arg(long = "rate", default_values_t = [1000u32, 5000, 20000])]
    pub rates: Vec<u32>,
    /// Runs per rate and server (figures are medians).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Length of one run, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub duration_secs: f64,
    /// Session pairs [default: highest rate ÷ 8, at least 16: 8 requests/s per
    /// requester at the highest rate, under the server's 10/s per-session limit].
    #[arg(long)]
    pub pairs: Option<usize>,
    /// Loopback source addresses (127.0.0.2 …).
    #[arg(long, default_value_t = 8)]
    pub source_ips: u8,
    /// Skip the echo baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Server log filter.
    #[arg(long, default_value = "warn")]
    pub server_log: String,
}

/// Counters of one phase (one rate, one server, one run).
#[derive(Default, Debug)]
struct Phase {
    latency: Histogram,
    lag: Histogram,
    completed: AtomicU64,
    denied: AtomicU64,
    timeouts: AtomicU64,
    overlaps: AtomicU64,
    broken: AtomicU64,
}

impl Phase {
    fn errors(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
            + self.timeouts.load(Ordering::Relaxed)
            + self.overlaps.load(Ordering::Relaxed)
            + self.broken.load(Ordering::Relaxed)
    }
}

/// One phase's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokerRun {
    /// Which server.
    pub kind: ServerKind,
    /// Target exchanges per second.
    pub rate: u32,
    /// Exchanges started.
    pub issued: u64,
    /// Exchanges completed.
    pub completed: u64,
    /// Denied, timed out, overlapped or broken.
    pub errors: u64,
    /// Of those, exchanges skipped because the pair's previous one was still
    /// running (the load generator, not the server, may be what is slow).
    pub overlaps: u64,
    /// Completed per second over the window.
    pub achieved: f64,
    /// Exchange latency.
    pub latency: Option<LatencySummary>,
    /// Generator lag.
    pub lag: Option<LatencySummary>,
    /// Server CPU per completed exchange, µs.
    pub server_cpu_us: f64,
}

/// Per server and rate, over runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokerSummary {
    /// Which server.
    pub kind: ServerKind,
    /// Target rate.
    pub rate: u32,
    /// Median p50.
    pub p50: Option<Duration>,
    /// Median p99.
    pub p99: Option<Duration>,
    /// Largest over runs.
    pub max: Option<Duration>,
    /// Median generator lag p99.
    pub lag_p99: Option<Duration>,
    /// Median server CPU per exchange, µs.
    pub server_cpu_us: f64,
    /// Median achieved rate.
    pub achieved: f64,
    /// Errors over all runs.
    pub errors: u64,
    /// Every exchange of every run completed.
    pub held: bool,
}

/// The figure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokerReport {
    /// Where and when.
    pub machine: Machine,
    /// Options used.
    pub args: BrokerArgs,
    /// Pairs used.
    pub pairs: usize,
    /// Every phase.
    pub runs: Vec<BrokerRun>,
    /// Per server and rate.
    pub summaries: Vec<BrokerSummary>,
    /// Highest rate chatr-server held without error.
    pub highest_held: Option<u32>,
}

impl BrokerReport {
    /// Markdown for `BENCHMARKS.md`.
    pub fn render(&self) -> String {
        let mut t = Table::new(&[
            "rate (pairs/s)",
            "server",
            "achieved/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "generator lag p99 ms",
            "server CPU µs/exchange",
            "errors",
            "held",
        ]);
        let opt = |d: Option<Duration>| d.map_or("-".to_string(), ms);
        for s in &self.summaries {
            t.row(vec![
                s.rate.to_string(),
                match s.kind {
                    ServerKind::Chatr => "chatr-server (broker)".into(),
                    ServerKind::Bare => "bare echo (2 round trips)".into(),
                },
                format!("{:.0}", s.achieved),
                opt(s.p50),
                opt(s.p99),
                opt(s.max),
                opt(s.lag_p99),
                format!("{:.0}", s.server_cpu_us),
                s.errors.to_string(),
                if s.held { "yes".into() } else { "no".into() },
            ]);
        }
        format!(
            "{}\n{} session pairs. Highest rate chatr-server held without error: **{}** (target: p99 ≤ 1 ms at 5000/s).\n",
            t.render(),
            self.pairs,
            self.highest_held
                .map_or("none of the rates tried".to_string(), |r| format!(
                    "{r} pairs/s"
                ))
        )
    }
}

/// A command to one pair: start an exchange that was due at `due`.
struct Start {
    due: Instant,
    phase: Arc<Phase>,
}

struct Exchange {
    sent: Instant,
    a_info: bool,
    b_info: bool,
    phase: Arc<Phase>,
}

/// The two logged-in sessions of a pair.
struct PairConns {
    a: Conn,
    b: Conn,
    a_id: uuid::Uuid,
    b_id: uuid::Uuid,
}

/// Drives one pair: starts exchanges on command, answers the server for both
/// sides, answers pings, and records each exchange.
async fn pair_task(
    kind: ServerKind,
    pair: PairConns,
    mut starts: mpsc::Receiver<Start>,
    broken: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let PairConns {
        mut a,
        mut b,
        a_id,
        b_id,
    } = pair;
    let a_endpoint = a.endpoint();
    let b_endpoint = b.endpoint();
    let mut current: Option<Exchange> = None;
    loop {
        let deadline = current
            .as_ref()
            .map(|e| e.sent + EXCHANGE_TIMEOUT)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let outcome: Result<(), BenchError> = tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(deadline.into()) => {
                if let Some(e) = current.take() {
                    e.phase.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            start = starts.recv() => {
                let Some(start) = start else { return };
                if current.is_some() {
                    start.phase.overlaps.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                } else {
                    let request = Packet::ConnectionRequest(PacketConnectionRequest {
                        uuid: b_id,
                        private_endpoint: a_endpoint,
                    hints: None,
                    });
                    let sent = Instant::now();
                    start.phase.lag.record(sent.saturating_duration_since(start.due));
                    current = Some(Exchange { sent, a_info: false, b_info: false, phase: start.phase });
                    a.send(&request).await
                }
            }
            p = a.recv() => match p {
                Ok(Some(Packet::Ping(ping))) => a.send(&Packet::Pong(PacketPong { ping_id: ping.ping_id })).await,
                Ok(Some(Packet::ClientInfo(_))) => {
                    if let Some(e) = current.as_mut() { e.a_info = true; }
                    Ok(())
                }
                Ok(Some(Packet::ConnectionRequestAccept(_))) => Ok(()),
                Ok(Some(Packet::ConnectionRequestDenied(_))) => {
                    if let Some(e) = current.take() { e.phase.denied.fetch_add(1, Ordering::Relaxed); }
                    Ok(())
                }
                // Bare echo: A's request came back; now B's half.
                Ok(Some(Packet::ConnectionRequest(_))) if kind == ServerKind::Bare => {
                    if let Some(e) = current.as_mut() { e.a_info = true; }
                    b.send(&Packet::ConnectionRequestAccept(PacketConnectionRequestAccept {
                        uuid: a_id,
                        private_endpoint: b_endpoint,
                    hints: None,
                    })).await
                }
                Ok(Some(other)) => Err(BenchError::Protocol(format!("A got unexpected {}", other.name()))),
                Ok(None) => Err(BenchError::Closed("A".into())),
                Err(e) => Err(e),
            },
            p = b.recv() => match p {
                Ok(Some(Packet::Ping(ping))) => b.send(&Packet::Pong(PacketPong { ping_id: ping.ping_id })).await,
                Ok(Some(Packet::ConnectionRequest(req))) => {
                    b.send(&Packet::ConnectionRequestAccept(PacketConnectionRequestAccept {
                        uuid: req.uuid,
                        private_endpoint: b_endpoint,
                    hints: None,
                    })).await
                }
                Ok(Some(Packet::ClientInfo(_))) => {
                    if let Some(e) = current.as_mut() { e.b_info = true; }
                    Ok(())
                }
                // Bare echo: B's accept came back.
                Ok(Some(Packet::ConnectionRequestAccept(_))) if kind == ServerKind::Bare => {
                    if let Some(e) = current.as_mut() { e.b_info = true; }
                    Ok(())
                }
                Ok(Some(other)) => Err(BenchError::Protocol(format!("B got unexpected {}", other.name()))),
                Ok(None) => Err(BenchError::Closed("B".into())),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = outcome {
            eprintln!("broker: pair broken: {e}");
            broken.fetch_add(1, Ordering::Relaxed);
            if let Some(ex) = current.take() {
                ex.phase.broken.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        if current.as_ref().is_some_and(|e| e.a_info && e.b_info)
            && let Some(e) = current.take()
        {
            e.phase.latency.record(e.sent.elapsed());
            e.phase.completed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A server with its logged-in pairs.
struct Rig {
    server: ServerProcess,
    starts: Vec<mpsc::Sender<Start>>,
    broken: Arc<AtomicU64>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

async fn rig(
    kind: ServerKind,
    ws: &Workspace,
    ids_file: &std::path::Path,
    identities: &Arc<Vec<Identity>>,
    pairs: usize,
    args: &BrokerArgs,
) -> Result<Rig, BenchError> {
    let mut spec = ws.spec(kind, Some(ids_file.to_path_buf()));
    spec.log = args.server_log.clone();
    let server = ServerProcess::start(&spec).await?;
    let connector = ws.cert.connector()?;
    let addr = server.addr();
    let logins = Arc::new(Semaphore::new(128));
    let mut handles = Vec::with_capacity(pairs);
    for p in 0..pairs {
        let (Some(a_id), Some(b_id)) = (identities.get(2 * p), identities.get(2 * p + 1)) else {
            return Err(BenchError::Server("not enough identities".into()));
        };
        let (a_id, b_id) = (a_id.clone(), b_id.clone());
        let connector = connector.clone();
        let logins = Arc::clone(&logins);
        let count = args.source_ips.max(1);
        handles.push(tokio::spawn(async move {
            let _permit = logins.acquire_owned().await;
            let src =
                |i: usize| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(count)) as u8));
            let mut a = Conn::connect(Some(src(2 * p)), addr, &connector).await?;
            a.login(&a_id).await?;
            let mut b = Conn::connect(Some(src(2 * p + 1)), addr, &connector).await?;
            b.login(&b_id).await?;
            Ok::<_, BenchError>(PairConns {
                a,
                b,
                a_id: a_id.uuid,
                b_id: b_id.uuid,
            })
        }));
    }
    let broken = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut starts = Vec::with_capacity(pairs);
    for h in handles {
        let pair = h
            .await
            .map_err(|e| BenchError::Server(format!("login task: {e}")))??;
        let (tx, rx) = mpsc::channel(4);
        starts.push(tx);
        tracker.spawn(pair_task(kind, pair, rx, Arc::clone(&broken), stop.clone()));
    }
    Ok(Rig {
        server,
        starts,
        broken,
        stop,
        tracker,
    })
}

/// Runs one phase: `rate` exchanges per second for `duration` on `rig`.
async fn phase(rig: &Rig, rate: u32, duration: Duration) -> BrokerRun {
    let phase = Arc::new(Phase::default());
    let before = rig.server.sample().ok();
    let total = (f64::from(rate) * duration.as_secs_f64()).round() as u64;
    let step = 1.0 / f64::from(rate.max(1));
    let start = Instant::now() + Duration::from_millis(20);
    let pairs = rig.starts.len().max(1) as u64;
    let mut k = 0u64;
    while k < total {
        let now = Instant::now();
        while k < total {
            let due = start + Duration::from_secs_f64(k as f64 * step);
            if due > now {
                break;
            }
            let Some(tx) = rig.starts.get((k % pairs) as usize) else {
                break;
            };
            if tx
                .try_send(Start {
                    due,
                    phase: Arc::clone(&phase),
                })
                .is_err()
            {
                phase.overlaps.fetch_add(1, Ordering::Relaxed);
            }
            k += 1;
        }
        if k < total {
            let next = start + Duration::from_secs_f64(k as f64 * step);
            tokio::time::sleep_until(next.into()).await;
        }
    }
    let issued = total;
    // Let the last exchanges finish.
    let drain_until = Instant::now() + EXCHANGE_TIMEOUT + Duration::from_secs(1);
    while Instant::now() < drain_until
        && phase.completed.load(Ordering::Relaxed) + phase.errors() < issued
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let completed = phase.completed.load(Ordering::Relaxed);
    let server_cpu_us = match (before, rig.server.sample().ok()) {
        (Some(b), Some(a)) => a.cpu_secs_since(&b) * 1e6 / completed.max(1) as f64,
        _ => 0.0,
    };
    BrokerRun {
        server_cpu_us,
        overlaps: phase.overlaps.load(Ordering::Relaxed),
        kind: rig.server.kind(),
        rate,
        issued,
        completed,
        errors: phase.errors() + issued.saturating_sub(completed + phase.errors()),
        achieved: completed as f64 / duration.as_secs_f64(),
        latency: phase.latency.summary(),
        lag: phase.lag.summary(),
    }
}

fn summarize(kind: ServerKind, rate: u32, runs: &[BrokerRun]) -> Option<BrokerSummary> {
    let mine: Vec<&BrokerRun> = runs
        .iter()
        .filter(|r| r.kind == kind && r.rate == rate)
        .collect();
    if mine.is_empty() {
        return None;
    }
    let lat = |f: &dyn Fn(&LatencySummary) -> Duration| {
        let v: Vec<Duration> = mine
            .iter()
            .filter_map(|r| r.latency.as_ref().map(f))
            .collect();
        if v.is_empty() {
            None
        } else {
            median_duration(v)
        }
    };
    let errors = mine.iter().map(|r| r.errors).sum();
    Some(BrokerSummary {
        kind,
        rate,
        p50: lat(&|l| l.p50),
        p99: lat(&|l| l.p99),
        max: mine.iter().filter_map(|r| r.latency.map(|l| l.max)).max(),
        lag_p99: median_duration(mine.iter().filter_map(|r| r.lag.map(|l| l.p99))),
        server_cpu_us: median(&mine.iter().map(|r| r.server_cpu_us).collect::<Vec<_>>())
            .unwrap_or(0.0),
        achieved: median(&mine.iter().map(|r| r.achieved).collect::<Vec<_>>()).unwrap_or(0.0),
        errors,
        held: errors == 0 && mine.iter().all(|r| r.completed == r.issued),
    })
}

/// Runs figure 3.
pub async fn run(args: &BrokerArgs) -> Result<BrokerReport, BenchError> {
    let machine = Machine::detect();
    let max_rate = args.rates.iter().copied().max().unwrap_or(1000);
    let pairs = args.pairs.unwrap_or((max_rate as usize / 8).max(16));
    let needed = (4 * pairs + 256) as u64;
    let limit = crate::bench::sys::raise_nofile(needed)?;
    if limit < needed {
        return Err(BenchError::Server(format!(
            "{pairs} pairs on two servers need {needed} descriptors here, but RLIMIT_NOFILE is {limit} \
             and cannot be raised (no CAP_SYS_RESOURCE); use fewer --pairs"
        )));
    }
    let ws = Workspace::new()?;
    let identities = Arc::new(Identity::derive_many(0xB0B, 2 * pairs));
    let ids_file = ws.path().join("identities.bin");
    identity::write_public(&ids_file, &identities)?;
    let kinds: Vec<ServerKind> = if args.no_baseline {
        vec![ServerKind::Chatr]
    } else {
        vec![ServerKind::Chatr, ServerKind::Bare]
    };
    let mut rigs = Vec::new();
    for &kind in &kinds {
        eprintln!("broker: logging in {pairs} pairs on {}", kind.label());
        rigs.push(rig(kind, &ws, &ids_file, &identities, pairs, args).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let duration = Duration::from_secs_f64(args.duration_secs);
    let mut runs = Vec::new();
    for run in 0..args.runs.max(1) {
        for &rate in &args.rates {
            let order: Vec<&Rig> = if run % 2 == 0 {
                rigs.iter().collect()
            } else {
                rigs.iter().rev().collect()
            };
            for rig in order {
                let r = phase(rig, rate, duration).await;
                eprintln!(
                    "broker run {}: {:>6}/s {:<18} completed {}/{} p50 {} p99 {} max {} lag p99 {} server {:.0} µs/exchange, errors {}",
                    run + 1,
                    rate,
                    r.kind.label(),
                    r.completed,
                    r.issued,
                    r.latency.map_or("-".into(), |l| ms(l.p50)),
                    r.latency.map_or("-".into(), |l| ms(l.p99)),
                    r.latency.map_or("-".into(), |l| ms(l.max)),
                    r.lag.map_or("-".into(), |l| ms(l.p99)),
                    r.server_cpu_us,
                    r.errors
                );
                runs.push(r);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    for rig in rigs {
        if rig.broken.load(Ordering::Relaxed) > 0 {
            eprintln!(
                "broker: {} broken pairs on {}",
                rig.broken.load(Ordering::Relaxed),
                rig.server.kind().label()
            );
        }
        rig.stop.cancel();
        rig.tracker.close();
        rig.tracker.wait().await;
        rig.server.stop(Duration::from_secs(30)).await;
    }
    let mut summaries = Vec::new();
    for &rate in &args.rates {
        for &kind in &kinds {
            summaries.extend(summarize(kind, rate, &runs));
        }
    }
    let highest_held = summaries
        .iter()
        .filter(|s| s.kind == ServerKind::Chatr && s.held)
        .map(|s| s.rate)
        .max();
    Ok(BrokerReport {
        machine,
        args: args.clone(),
        pairs,
        runs,
        summaries,
        highest_held,
    })
}
