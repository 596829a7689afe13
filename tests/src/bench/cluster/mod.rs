//! `chatr-bench cluster` (feature `cluster`): issue 14's figures, each beside its
//! baseline from the same run, against a real `nats-server` and PostgreSQL started
//! here on loopback and Chatr nodes as child processes (`chatr-bench serve`).
//!
//! 1. **Brokering latency** (request written → both ClientInfos read, as in `broker`),
//!    the same pairs and rate on: one node without cluster mode (the baseline), a
//!    one-node cluster, and a three-node cluster with half the pairs on one node and
//!    half across two. Medians over runs, order alternated. Target: cross-node p99 ≤
//!    same-node p99 + 2 ms.
//! 2. **A killed node** (`kill -9`): time until a request for one of its UUIDs is
//!    answered Denied, and how long its clients' logins on another node take.
//!    Targets: offline within 1 s; logins within the takeover probe (2 s) + 1 s.
//! 3. **A hung node** (SIGSTOP): time until requests for its UUIDs are answered at
//!    once ("no responders", not after the cross-node request time-out), and its
//!    clients' logins elsewhere. Target: offline within 15 s.
//! 4. **NATS killed, restarted**: time from the restart until a cross-node request
//!    reaches its target again. Target: within 5 s.
//! 5. **Duplicate logins**: the same UUID logging in on two nodes at once, N trials;
//!    sessions admitted per trial. Target: exactly one every time.
//! 6. **Registry**: registrations through two nodes while PostgreSQL is killed and
//!    restarted; acknowledged (201) ones missing afterwards. Target: 0.

mod services;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chatr_proto::{Packet, PacketConnectionRequest, PacketConnectionRequestAccept, PacketPong};
use ed25519_dalek::Signer as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::bench::BenchError;
use crate::bench::client::Conn;
use crate::bench::identity::{self, Identity};
use crate::bench::report::Table;
use crate::bench::serve::ServerKind;
use crate::bench::server::{ClusterSpec, ServerProcess, Workspace};
use crate::bench::stats::{Histogram, LatencySummary, median_duration, ms};
use crate::bench::sys::Machine;

pub use services::{Nats, Postgres};

/// Options of `cluster`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct ClusterArgs {
    /// Runs of the latency phases (figures are medians).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Length of one latency phase, seconds.
    #[arg(long, default_value_t = 4.0)]
    pub duration_secs: f64,
    /// Exchanges per second in a latency phase (all pairs together).
    #[arg(long, default_value_t = 400)]
    pub rate: u32,
    /// Session pairs in a latency phase. Each pair's requester asks `rate / pairs` times a
    /// second, which must stay within the server's per-session request limit.
    #[arg(long, default_value_t = 96)]
    pub pairs: usize,
    /// Clients of the node that is killed (and of the one that is frozen).
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Duplicate-login trials.
    #[arg(long, default_value_t = 100)]
    pub trials: usize,
    /// Registrations during the PostgreSQL restart.
    #[arg(long, default_value_t = 300)]
    pub registrations: usize,
    /// Server log filter.
    #[arg(long, default_value = "warn")]
    pub server_log: String,
}

/// Latency of one class of pairs in one phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LatencyRow {
    /// Topology and pair class.
    pub setup: String,
    /// Median over runs of p50.
    pub p50: Option<Duration>,
    /// Median over runs of p99.
    pub p99: Option<Duration>,
    /// Largest over runs.
    pub max: Option<Duration>,
    /// Exchanges completed over all runs.
    pub completed: u64,
    /// Exchanges denied or unanswered over all runs.
    pub errors: u64,
}

/// Failure timings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failures {
    /// kill -9: until a request for its UUID was denied.
    pub killed_offline: Duration,
    /// kill -9: its clients' logins on another node, p50 / max.
    pub killed_logins: Option<LatencySummary>,
    /// kill -9: logins that failed.
    pub killed_login_errors: usize,
    /// SIGSTOP: until requests for its UUID were denied at once.
    pub hung_offline: Duration,
    /// SIGSTOP: until the first request for its UUID was answered at all.
    pub hung_first_answer: Duration,
    /// SIGSTOP: its clients' logins on another node.
    pub hung_logins: Option<LatencySummary>,
    /// SIGSTOP: logins that failed.
    pub hung_login_errors: usize,
    /// NATS restart → a cross-node request delivered.
    pub nats_heal: Duration,
    /// Duplicate logins: trials with exactly one session.
    pub duplicate_ok: usize,
    /// Duplicate logins: trials.
    pub duplicate_trials: usize,
    /// Registry: acknowledged registrations.
    pub registrations_acknowledged: usize,
    /// Registry: refused while PostgreSQL was down.
    pub registrations_refused: usize,
    /// Registry: acknowledged but missing afterwards.
    pub registrations_lost: usize,
    /// The takeover probe the nodes ran with.
    pub takeover_probe: Duration,
}

/// The report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterReport {
    /// Where and when.
    pub machine: Machine,
    /// Options.
    pub args: ClusterArgs,
    /// Latency rows.
    pub latency: Vec<LatencyRow>,
    /// Failure timings.
    pub failures: Failures,
}

const TAKEOVER_PROBE: Duration = Duration::from_secs(2);

impl ClusterReport {
    /// Markdown for `BENCHMARKS.md`.
    pub fn render(&self) -> String {
        let opt = |d: Option<Duration>| d.map_or("-".to_string(), ms);
        let mut t = Table::new(&["setup", "p50 ms", "p99 ms", "max ms", "completed", "errors"]);
        for row in &self.latency {
            t.row(vec![
                row.setup.clone(),
                opt(row.p50),
                opt(row.p99),
                opt(row.max),
                row.completed.to_string(),
                row.errors.to_string(),
            ]);
        }
        let p99 = |name: &str| {
            self.latency
                .iter()
                .find(|r| r.setup == name)
                .and_then(|r| r.p99)
        };
        let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
        let cross = p99(CROSS);
        let same = p99(SAME3);
        let cross_met = match (cross, same) {
            (Some(c), Some(s)) => c <= s + Duration::from_millis(2),
            _ => false,
        };
        let f = &self.failures;
        let logins = |s: &Option<LatencySummary>| {
            s.map_or("-".to_string(), |s| {
                format!("p50 {} ms, max {} ms", ms(s.p50), ms(s.max))
            })
        };
        let mut g = Table::new(&["target", "measured", "verdict"]);
        g.row(vec![
            "cross-node p99 ≤ same-node p99 + 2 ms".into(),
            format!("{} ms vs {} ms", opt(cross), opt(same)),
            verdict(cross_met).into(),
        ]);
        g.row(vec![
            "killed node: its UUIDs offline within 1 s".into(),
            format!("{} ms", ms(f.killed_offline)),
            verdict(f.killed_offline <= Duration::from_secs(1)).into(),
        ]);
        let killed_max = f.killed_logins.map(|s| s.max);
        g.row(vec![
            format!(
                "killed node: its {} clients log in elsewhere within the probe ({} s) + 1 s",
                self.args.clients,
                f.takeover_probe.as_secs()
            ),
            format!(
                "{} ({} failed)",
                logins(&f.killed_logins),
                f.killed_login_errors
            ),
            verdict(
                f.killed_login_errors == 0
                    && killed_max.is_some_and(|m| m <= f.takeover_probe + Duration::from_secs(1)),
            )
            .into(),
        ]);
        g.row(vec![
            "hung node: its UUIDs offline within 15 s".into(),
            format!(
                "answered (Denied after the cross-node request time-out) from {} ms; at once from {} ms",
                ms(f.hung_first_answer),
                ms(f.hung_offline)
            ),
            verdict(f.hung_offline <= Duration::from_secs(15)).into(),
        ]);
        g.row(vec![
            "hung node: its clients log in elsewhere".into(),
            format!(
                "{} ({} failed)",
                logins(&f.hung_logins),
                f.hung_login_errors
            ),
            verdict(f.hung_login_errors == 0).into(),
        ]);
        g.row(vec![
            "NATS: routing heals within 5 s of it coming back".into(),
            format!("{} ms", ms(f.nats_heal)),
            verdict(f.nats_heal <= Duration::from_secs(5)).into(),
        ]);
        g.row(vec![
            "duplicate logins: exactly one live session in every racing trial".into(),
            format!("{}/{}", f.duplicate_ok, f.duplicate_trials),
            verdict(f.duplicate_ok == f.duplicate_trials).into(),
        ]);
        g.row(vec![
            "registry: 0 acknowledged registrations lost across a PostgreSQL crash".into(),
            format!(
                "{} lost of {} acknowledged ({} refused while it was down)",
                f.registrations_lost, f.registrations_acknowledged, f.registrations_refused
            ),
            verdict(f.registrations_lost == 0 && f.registrations_refused > 0).into(),
        ]);
        format!(
            "{}\n{} pairs at {} exchanges/s, {} runs of {} s (medians).\n\n{}",
            t.render(),
            self.args.pairs,
            self.args.rate,
            self.args.runs,
            self.args.duration_secs,
            g.render()
        )
    }
}

const SINGLE: &str = "1 node, cluster mode off (baseline)";
const SAME1: &str = "1-node cluster, same node";
const SAME3: &str = "3-node cluster, same node";
const CROSS: &str = "3-node cluster, across nodes";

/// One pair: A requests B.
struct Pair {
    a: Conn,
    b: Conn,
    a_id: uuid::Uuid,
    b_id: uuid::Uuid,
}

/// Answers pings on `conn` until a packet that is not a ping.
async fn next(conn: &mut Conn) -> Result<Packet, BenchError> {
    loop {
        match conn.recv().await? {
            Some(Packet::Ping(ping)) => {
                conn.send(&Packet::Pong(PacketPong {
                    ping_id: ping.ping_id,
                }))
                .await?;
            }
            Some(packet) => return Ok(packet),
            None => return Err(BenchError::Closed("server closed".into())),
        }
    }
}

/// One exchange; its latency, or `None` if it was denied or not answered in 5 s.
async fn exchange(pair: &mut Pair) -> Result<Option<Duration>, BenchError> {
    let started = Instant::now();
    let request = Packet::ConnectionRequest(PacketConnectionRequest {
        uuid: pair.b_id,
        private_endpoint: pair.a.endpoint(),
        hints: None,
    });
    pair.a.send(&request).await?;
    let (mut a_info, mut b_info) = (false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !(a_info && b_info) {
        let got = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                p = next(&mut pair.a) => p.map(|p| (true, p)),
                p = next(&mut pair.b) => p.map(|p| (false, p)),
            }
        })
        .await;
        let Ok(got) = got else {
            return Ok(None);
        };
        match got? {
            (true, Packet::ClientInfo(_)) => a_info = true,
            (true, Packet::ConnectionRequestAccept(_)) => {}
            (true, Packet::ConnectionRequestDenied(_)) => return Ok(None),
            (false, Packet::ConnectionRequest(r)) => {
                pair.b
                    .send(&Packet::ConnectionRequestAccept(
                        PacketConnectionRequestAccept {
                            uuid: r.uuid,
                            private_endpoint: pair.b.endpoint(),
                            hints: None,
                        },
                    ))
                    .await?;
            }
            (false, Packet::ClientInfo(_)) => b_info = true,
            (_, other) => {
                return Err(BenchError::Protocol(format!("unexpected {}", other.name())));
            }
        }
    }
    let _ = pair.a_id;
    Ok(Some(started.elapsed()))
}

async fn connect(
    node: SocketAddr,
    connector: &TlsConnector,
    id: &Identity,
) -> Result<Conn, BenchError> {
    let mut conn = Conn::connect(None, node, connector).await?;
    conn.login(id).await?;
    Ok(conn)
}

/// Logs pairs in: pair k's A on `nodes[a(k)]`, B on `nodes[b(k)]`.
async fn pairs(
    nodes: &[SocketAddr],
    connector: &TlsConnector,
    ids: &[Identity],
    count: usize,
    place: impl Fn(usize) -> (usize, usize),
) -> Result<Vec<Pair>, BenchError> {
    let mut out = Vec::with_capacity(count);
    for k in 0..count {
        let (ia, ib) = place(k);
        let (a_id, b_id) = (&ids[2 * k], &ids[2 * k + 1]);
        out.push(Pair {
            a: connect(nodes[ia], connector, a_id).await?,
            b: connect(nodes[ib], connector, b_id).await?,
            a_id: a_id.uuid,
            b_id: b_id.uuid,
        });
    }
    Ok(out)
}

/// Runs exchanges at `rate` per second over `pairs` for `duration`; records each
/// pair's latency into its class (`class(k)`).
async fn phase(
    pairs: Vec<Pair>,
    rate: u32,
    duration: Duration,
    classes: &[Arc<(Histogram, std::sync::atomic::AtomicU64)>],
    class: impl Fn(usize) -> usize,
) -> Vec<Pair> {
    let count = pairs.len().max(1);
    let period = Duration::from_secs_f64(count as f64 / f64::from(rate.max(1)));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let tasks: Vec<_> = pairs
        .into_iter()
        .enumerate()
        .map(|(k, mut pair)| {
            let slot = Arc::clone(&classes[class(k)]);
            // Spread the pairs over one period.
            let first = start + period.mul_f64(k as f64 / count as f64);
            tokio::spawn(async move {
                let mut due = first;
                let mut told = false;
                while due < start + duration {
                    tokio::time::sleep_until(due).await;
                    let outcome = exchange(&mut pair).await;
                    if let Ok(Some(latency)) = outcome {
                        slot.0.record(latency);
                    } else {
                        slot.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        // The first failure of each pair says why (a figure with errors
                        // is no figure).
                        if !told {
                            told = true;
                            match outcome {
                                Err(e) => {
                                    eprintln!("cluster latency: pair {k}: exchange failed: {e}")
                                }
                                _ => eprintln!(
                                    "cluster latency: pair {k}: denied or unanswered within 5 s"
                                ),
                            }
                        }
                    }
                    due += period;
                }
                pair
            })
        })
        .collect();
    let mut back = Vec::new();
    for task in tasks {
        if let Ok(pair) = task.await {
            back.push(pair);
        }
    }
    back
}

/// Ping time-out of the nodes of the failure phases: a client that stops answering is
/// dropped within it.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Ping time-out of the latency phases' nodes: longer than all the phases together.
const IDLE_PING_TIMEOUT: Duration = Duration::from_secs(600);

fn node_spec(
    ws: &Workspace,
    name: &str,
    ids: &std::path::Path,
    cluster: Option<ClusterSpec>,
    log: &str,
    ping_timeout: Duration,
) -> Result<crate::bench::server::ServerSpec, BenchError> {
    let mut spec = ws.spec(ServerKind::Chatr, Some(ids.to_path_buf()));
    spec.dir = ws.path().join(name);
    std::fs::create_dir_all(&spec.dir).map_err(|e| BenchError::io("node dir", e))?;
    spec.log = log.to_owned();
    spec.ping_interval_ms = Some(1000);
    spec.ping_timeout_ms = Some(u64::try_from(ping_timeout.as_millis()).unwrap_or(u64::MAX));
    spec.cluster = cluster;
    Ok(spec)
}

fn cluster_spec(nats: &Nats, name: &str, pg: Option<&Postgres>) -> ClusterSpec {
    ClusterSpec {
        nats_url: Some(nats.url()),
        node_name: name.to_owned(),
        postgres_url: pg.map(Postgres::url),
        takeover_probe_ms: Some(TAKEOVER_PROBE.as_millis() as u64),
    }
}

async fn start_nodes(
    ws: &Workspace,
    ids: &std::path::Path,
    nats: &Nats,
    pg: Option<&Postgres>,
    names: &[&str],
    log: &str,
    ping_timeout: Duration,
) -> Result<Vec<ServerProcess>, BenchError> {
    let mut nodes = Vec::new();
    for name in names {
        let spec = node_spec(
            ws,
            name,
            ids,
            Some(cluster_spec(nats, name, pg)),
            log,
            ping_timeout,
        )?;
        nodes.push(ServerProcess::start(&spec).await?);
    }
    // Let them find the bucket and each other.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(nodes)
}

fn summarize(setup: &str, runs: &[(Option<LatencySummary>, u64)]) -> LatencyRow {
    LatencyRow {
        setup: setup.to_owned(),
        p50: median_duration(runs.iter().filter_map(|r| r.0.map(|s| s.p50))),
        p99: median_duration(runs.iter().filter_map(|r| r.0.map(|s| s.p99))),
        max: runs.iter().filter_map(|r| r.0.map(|s| s.max)).max(),
        completed: runs.iter().filter_map(|r| r.0.map(|s| s.count)).sum(),
        errors: runs.iter().map(|r| r.1).sum(),
    }
}

type Slot = Arc<(Histogram, std::sync::atomic::AtomicU64)>;

fn slot() -> Slot {
    Arc::new((Histogram::new(), std::sync::atomic::AtomicU64::new(0)))
}

fn take(slot: &Slot) -> (Option<LatencySummary>, u64) {
    (
        slot.0.summary(),
        slot.1.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// Figure 1: latency on the three topologies.
async fn latency(
    ws: &Workspace,
    ids_file: &std::path::Path,
    ids: &[Identity],
    nats: &Nats,
    args: &ClusterArgs,
) -> Result<Vec<LatencyRow>, BenchError> {
    let connector = ws.cert.connector()?;
    let log = &args.server_log;
    // The pairs of the other set-ups sit idle (not reading, so not answering pings)
    // while one set-up is measured.
    let idle = IDLE_PING_TIMEOUT;
    let single = ServerProcess::start(&node_spec(ws, "single", ids_file, None, log, idle)?).await?;
    let one = start_nodes(ws, ids_file, nats, None, &["one-1"], log, idle).await?;
    let three = start_nodes(
        ws,
        ids_file,
        nats,
        None,
        &["three-1", "three-2", "three-3"],
        log,
        idle,
    )
    .await?;
    let p = args.pairs;
    let addrs3: Vec<SocketAddr> = three.iter().map(ServerProcess::addr).collect();
    let mut single_pairs =
        Some(pairs(&[single.addr()], &connector, &ids[..2 * p], p, |_| (0, 0)).await?);
    let mut one_pairs = Some(
        pairs(&[one[0].addr()], &connector, &ids[2 * p..4 * p], p, |_| {
            (0, 0)
        })
        .await?,
    );
    // Even pairs on one node, odd pairs across two.
    let mut three_pairs = Some(
        pairs(&addrs3, &connector, &ids[4 * p..6 * p], p, |k| {
            if k % 2 == 0 {
                (k % 3, k % 3)
            } else {
                (k % 3, (k + 1) % 3)
            }
        })
        .await?,
    );
    let duration = Duration::from_secs_f64(args.duration_secs);
    let (mut r_single, mut r_one, mut r_same, mut r_cross) = (vec![], vec![], vec![], vec![]);
    for run in 0..args.runs.max(1) {
        let mut order = [0, 1, 2];
        if run % 2 == 1 {
            order.reverse();
        }
        for which in order {
            match which {
                0 => {
                    let s = slot();
                    let back = phase(
                        single_pairs.take().unwrap_or_default(),
                        args.rate,
                        duration,
                        &[Arc::clone(&s)],
                        |_| 0,
                    )
                    .await;
                    single_pairs = Some(back);
                    r_single.push(take(&s));
                }
                1 => {
                    let s = slot();
                    let back = phase(
                        one_pairs.take().unwrap_or_default(),
                        args.rate,
                        duration,
                        &[Arc::clone(&s)],
                        |_| 0,
                    )
                    .await;
                    one_pairs = Some(back);
                    r_one.push(take(&s));
                }
                _ => {
                    let (same, cross) = (slot(), slot());
                    let back = phase(
                        three_pairs.take().unwrap_or_default(),
                        args.rate,
                        duration,
                        &[Arc::clone(&same), Arc::clone(&cross)],
                        |k| k % 2,
                    )
                    .await;
                    three_pairs = Some(back);
                    r_same.push(take(&same));
                    r_cross.push(take(&cross));
                }
            }
            eprintln!(
                "cluster latency run {}: {}",
                run + 1,
                ["single", "1-node cluster", "3-node cluster"][which]
            );
        }
    }
    for node in std::iter::once(single).chain(one).chain(three) {
        node.stop(Duration::from_secs(10)).await;
    }
    Ok(vec![
        summarize(SINGLE, &r_single),
        summarize(SAME1, &r_one),
        summarize(SAME3, &r_same),
        summarize(CROSS, &r_cross),
    ])
}

/// Sends requests from `from` for `to`, one at a time, until one is denied within
/// `quick`; returns (first answer at all, first quick denial), from `since`.
async fn until_offline(
    from: &mut Conn,
    to: uuid::Uuid,
    since: Instant,
    quick: Duration,
) -> Result<(Duration, Duration), BenchError> {
    let mut first_answer = None;
    loop {
        if since.elapsed() > Duration::from_secs(60) {
            return Err(BenchError::Timeout(format!("{to} never read offline")));
        }
        let asked = Instant::now();
        from.send(&Packet::ConnectionRequest(PacketConnectionRequest {
            uuid: to,
            private_endpoint: from.endpoint(),
            hints: None,
        }))
        .await?;
        match tokio::time::timeout(Duration::from_secs(10), next(from)).await {
            Ok(Ok(Packet::ConnectionRequestDenied(d))) if d.uuid == to => {
                let answered = since.elapsed();
                first_answer.get_or_insert(answered);
                if asked.elapsed() <= quick {
                    return Ok((first_answer.unwrap_or(answered), answered));
                }
            }
            Ok(Ok(other)) => {
                return Err(BenchError::Protocol(format!(
                    "expected Denied, got {}",
                    other.name()
                )));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs `ids` in on `node` at once; each login's time, and how many failed.
async fn logins(
    node: SocketAddr,
    connector: &TlsConnector,
    ids: &[Identity],
) -> (Option<LatencySummary>, usize, Vec<Conn>) {
    let tasks: Vec<_> = ids
        .iter()
        .cloned()
        .map(|id| {
            let connector = connector.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let conn = connect(node, &connector, &id).await;
                (started.elapsed(), conn)
            })
        })
        .collect();
    let h = Histogram::new();
    let mut failed = 0;
    let mut conns = Vec::new();
    for task in tasks {
        match task.await {
            Ok((took, Ok(conn))) => {
                h.record(took);
                conns.push(conn);
            }
            _ => failed += 1,
        }
    }
    (h.summary(), failed, conns)
}

/// Keeps `conns` answering pings until `stop`.
fn keep_alive(conns: Vec<Conn>, stop: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    conns
        .into_iter()
        .map(|mut conn| {
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        p = conn.recv() => match p {
                            Ok(Some(Packet::Ping(ping))) => {
                                let _ = conn.send(&Packet::Pong(PacketPong { ping_id: ping.ping_id })).await;
                            }
                            Ok(Some(_)) => {}
                            _ => return,
                        },
                    }
                }
            })
        })
        .collect()
}

fn signal(pid: u32, name: &str) -> Result<(), BenchError> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .map_err(|e| BenchError::io("kill", e))?;
    if status.success() {
        Ok(())
    } else {
        Err(BenchError::Server(format!("kill -{name} {pid} failed")))
    }
}

/// One PUT /api/1/clients/{uuid}; the status code (0: no answer).
async fn register(api: SocketAddr, connector: &TlsConnector, id: &Identity) -> u16 {
    let body = format!(
        "{{\"key\":\"{}\"}}",
        base64::engine::general_purpose::STANDARD.encode(id.key.verifying_key().as_bytes())
    );
    let signature =
        base64::engine::general_purpose::STANDARD.encode(id.key.sign(body.as_bytes()).to_bytes());
    let request = format!(
        "PUT /api/1/clients/{} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Chatr-PublicKey-Signature: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        id.uuid,
        body.len()
    );
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(api).await.ok()?;
        let mut tls = connector
            .connect(crate::bench::tls::server_name(), tcp)
            .await
            .ok()?;
        tls.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        text.get(9..12)?.parse::<u16>().ok()
    };
    tokio::time::timeout(Duration::from_secs(15), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Figures 2–6.
async fn failures(
    ws: &Workspace,
    ids_file: &std::path::Path,
    ids: &[Identity],
    nats: &mut Nats,
    args: &ClusterArgs,
) -> Result<Failures, BenchError> {
    let connector = ws.cert.connector()?;
    let log = &args.server_log;
    let mut nodes = start_nodes(
        ws,
        ids_file,
        nats,
        None,
        &["f-1", "f-2", "f-3"],
        log,
        PING_TIMEOUT,
    )
    .await?;
    let n = args.clients;
    let (victims, rest) = ids.split_at(n);
    let (frozen, rest) = rest.split_at(n);
    let (observer_id, rest) = rest.split_at(1);
    let addrs: Vec<SocketAddr> = nodes.iter().map(ServerProcess::addr).collect();
    // Victims on f-1, frozen on f-3, the observer on f-2.
    let (_, _, on_1) = logins(addrs[0], &connector, victims).await;
    let (_, _, on_3) = logins(addrs[2], &connector, frozen).await;
    let stop = CancellationToken::new();
    let mut keepers = keep_alive(on_3, stop.clone());
    let mut observer = connect(addrs[1], &connector, &observer_id[0]).await?;

    // kill -9 f-1.
    let victim_pid = nodes[0].pid();
    signal(victim_pid, "KILL")?;
    let killed_at = Instant::now();
    drop(on_1);
    let (_, killed_offline) = until_offline(
        &mut observer,
        victims[0].uuid,
        killed_at,
        Duration::from_millis(900),
    )
    .await?;
    let (killed_logins, killed_login_errors, back) = logins(addrs[1], &connector, victims).await;
    keepers.extend(keep_alive(back, stop.clone()));
    eprintln!("cluster: kill -9 done");

    // SIGSTOP f-3.
    let frozen_pid = nodes[2].pid();
    signal(frozen_pid, "STOP")?;
    let stopped_at = Instant::now();
    let (hung_first_answer, hung_offline) = until_offline(
        &mut observer,
        frozen[0].uuid,
        stopped_at,
        Duration::from_millis(200),
    )
    .await?;
    let (hung_logins, hung_login_errors, back) = logins(addrs[1], &connector, frozen).await;
    keepers.extend(keep_alive(back, stop.clone()));
    signal(frozen_pid, "CONT")?;
    eprintln!("cluster: SIGSTOP done");
    stop.cancel();
    for k in keepers {
        let _ = k.await;
    }
    drop(observer);
    for node in nodes.drain(..) {
        node.stop(Duration::from_secs(10)).await;
    }

    // NATS killed and restarted, between two fresh nodes.
    let (first, rest) = rest.split_at(1);
    let (second, rest) = rest.split_at(1);
    let pair_nodes =
        start_nodes(ws, ids_file, nats, None, &["h-1", "h-2"], log, PING_TIMEOUT).await?;
    let mut pair = Pair {
        a: connect(pair_nodes[0].addr(), &connector, &first[0]).await?,
        b: connect(pair_nodes[1].addr(), &connector, &second[0]).await?,
        a_id: first[0].uuid,
        b_id: second[0].uuid,
    };
    if exchange(&mut pair).await?.is_none() {
        return Err(BenchError::Protocol(
            "cross-node exchange failed before the NATS test".into(),
        ));
    }
    nats.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.restart()?;
    let restarted = Instant::now();
    let nats_heal = loop {
        if restarted.elapsed() > Duration::from_secs(60) {
            return Err(BenchError::Timeout("routing did not heal".into()));
        }
        if exchange(&mut pair).await?.is_some() {
            break restarted.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("cluster: NATS restart done");

    // Duplicate logins on the two nodes.
    let mut duplicate_ok = 0;
    let trial_ids = &rest[..args.trials.min(rest.len())];
    let rest = &rest[trial_ids.len()..];
    for (t, id) in trial_ids.iter().enumerate() {
        let (x, y) = if t % 2 == 0 { (0, 1) } else { (1, 0) };
        let stop = CancellationToken::new();
        let attempt = |node: SocketAddr| {
            let id = id.clone();
            let connector = connector.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let Ok(conn) = connect(node, &connector, &id).await else {
                    return false;
                };
                // Live: answer the other login's probe until the trial ends.
                for k in keep_alive(vec![conn], stop) {
                    let _ = k.await;
                }
                true
            })
        };
        let a = attempt(pair_nodes[x].addr());
        let b = attempt(pair_nodes[y].addr());
        // Both outcomes are known once the loser was refused (after its probe).
        tokio::time::sleep(TAKEOVER_PROBE + Duration::from_millis(500)).await;
        stop.cancel();
        let admitted =
            usize::from(a.await.unwrap_or(false)) + usize::from(b.await.unwrap_or(false));
        if admitted == 1 {
            duplicate_ok += 1;
        }
        if t % 10 == 9 {
            eprintln!("cluster: duplicate trials {}", t + 1);
        }
    }
    drop(pair);
    for node in pair_nodes {
        node.stop(Duration::from_secs(10)).await;
    }

    // Registry across a PostgreSQL crash.
    let pg = Postgres::start()?;
    let reg_nodes = start_nodes(
        ws,
        ids_file,
        nats,
        Some(&pg),
        &["r-1", "r-2"],
        log,
        PING_TIMEOUT,
    )
    .await?;
    let apis: Vec<SocketAddr> = reg_nodes
        .iter()
        .filter_map(ServerProcess::api_addr)
        .collect();
    let regs = Identity::derive_many(0xC1A5, args.registrations);
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for (i, id) in regs.iter().enumerate() {
        if i == regs.len() / 3 {
            pg.crash();
        }
        if i == regs.len() / 2 {
            pg.start_again()?;
        }
        match register(apis[i % apis.len()], &connector, id).await {
            201 => acknowledged.push(id.clone()),
            _ => refused += 1,
        }
    }
    for node in reg_nodes {
        node.stop(Duration::from_secs(10)).await;
    }
    // A fresh node loads the registry from PostgreSQL: every acknowledged identity must log in.
    let fresh = start_nodes(ws, ids_file, nats, Some(&pg), &["r-3"], log, PING_TIMEOUT).await?;
    let mut lost = 0;
    for id in &acknowledged {
        if connect(fresh[0].addr(), &connector, id).await.is_err() {
            lost += 1;
        }
    }
    for node in fresh {
        node.stop(Duration::from_secs(10)).await;
    }
    let _ = rest;
    Ok(Failures {
        killed_offline,
        killed_logins,
        killed_login_errors,
        hung_offline,
        hung_first_answer,
        hung_logins,
        hung_login_errors,
        nats_heal,
        duplicate_ok,
        duplicate_trials: trial_ids.len(),
        registrations_acknowledged: acknowledged.len(),
        registrations_refused: refused,
        registrations_lost: lost,
        takeover_probe: TAKEOVER_PROBE,
    })
}

/// Runs every figure.
pub async fn run(args: &ClusterArgs) -> Result<ClusterReport, BenchError> {
    // A requester over the per-session limit is denied (and, kept up, disconnected):
    // its "latency" would be the rate limiter's.
    let per_session = f64::from(args.rate) / args.pairs.max(1) as f64;
    let limit = chatr_server::Limits::default().requests_per_second;
    if per_session > f64::from(limit) {
        return Err(BenchError::Usage(format!(
            "--rate {} over --pairs {} is {per_session:.1} requests a second per session, over the \
             server's per-session limit of {limit}/s: use more pairs or a lower rate",
            args.rate, args.pairs
        )));
    }
    let machine = Machine::detect();
    let _ = crate::bench::sys::raise_nofile(65_536);
    let ws = Workspace::new()?;
    let count = 6 * args.pairs + 2 * args.clients + args.trials + 8;
    let ids = Identity::derive_many(0xC1, count);
    let ids_file = ws.path().join("identities.bin");
    identity::write_public(&ids_file, &ids)?;
    let mut nats = Nats::start()?;
    let latency = latency(&ws, &ids_file, &ids[..6 * args.pairs], &nats, args).await?;
    let failures = failures(&ws, &ids_file, &ids[6 * args.pairs..], &mut nats, args).await?;
    Ok(ClusterReport {
        machine,
        args: args.clone(),
        latency,
        failures,
    })
}
