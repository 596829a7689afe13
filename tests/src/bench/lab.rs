//! Figure 4 in the NAT lab (`crate::lab`): punch time, with the real `chatr-server`
//! and `chatr` binaries inside network namespaces; and the lab plumbing (server,
//! enrolled peers) that figure 5 ([`throughput`](super::throughput)) shares.
//!
//! **Punch time** (`punch-time --delay-ms D`): per run a fresh pair of NAT sites
//! (default port-restricted ↔ port-restricted), each uplink delayed by D/2 by the
//! lab's userspace wire, so the one-way delay between the two routers is D and the
//! peer-to-peer RTT is 2·D. The server sits on the public segment. Alice runs
//! `chatr pipe --listen`, Bob `chatr pipe alice`, both with `--report`; the figure
//! is `punch_ms` (ClientInfo → authenticated QUIC link) from both reports, divided
//! by the RTT. The RTT baseline is **measured in the same run**: `ping` from each
//! peer to the server crosses its own uplink once each way, so the peer-to-peer
//! RTT is the sum of the two. Target: punch ≤ 2 RTT + 50 ms.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chatr_client::AttemptReport;

use crate::bench::BenchError;
use crate::bench::report::Table;
use crate::bench::stats::median;
use crate::bench::sys::Machine;
use crate::lab::lab_server::LabServer;
use crate::lab::matrix::Binaries;
use crate::lab::{Host, Lab, LinkCondition, NatProfile};

const STEP_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn lab_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Lab(e.to_string())
}

/// Finds the binaries: `--bin-dir`, else `target/release` when both are there, else
/// what the NAT lab would use.
pub(crate) fn binaries(bin_dir: Option<&Path>) -> Result<Binaries, BenchError> {
    if bin_dir.is_none() {
        let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release");
        if release.join("chatr").is_file() && release.join("chatr-server").is_file() {
            return Binaries::locate(Some(&release)).map_err(lab_err);
        }
    }
    Binaries::locate(bin_dir).map_err(lab_err)
}

/// Starts the real server in the lab (see [`LabServer`]), with `extra` arguments.
pub(crate) fn start_server(
    bins: &Binaries,
    host: &Host,
    dir: &Path,
    extra: &[&str],
) -> Result<LabServer, BenchError> {
    LabServer::start_with(bins, host, dir, extra).map_err(|e| BenchError::Tool {
        tool: "chatr-server".into(),
        reason: e.to_string(),
    })
}

/// Runs a command to completion within `timeout`; `None` if killed at the deadline.
pub(crate) fn wait_with_timeout(
    mut child: Child,
    timeout: Duration,
) -> Result<Option<ExitStatus>, BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(Some(status)),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(BenchError::io("wait", e)),
        }
    }
}

/// One `chatr` peer in the lab.
pub(crate) struct Peer {
    pub(crate) host: Host,
    home: PathBuf,
    pub(crate) dir: PathBuf,
    name: &'static str,
}

impl Peer {
    pub(crate) fn command(&self, bins: &Binaries, args: &[&str]) -> Command {
        let mut cmd = self.host.netns().command(&bins.chatr);
        cmd.arg("--home")
            .arg(&self.home)
            .args(args)
            .env("NO_COLOR", "1");
        cmd
    }

    /// A setup step that must succeed; returns stdout.
    fn step(&self, bins: &Binaries, args: &[&str]) -> Result<String, BenchError> {
        let out = self.dir.join(format!("{}.step.out", self.name));
        let err = self.dir.join(format!("{}.step.err", self.name));
        let child = self
            .command(bins, args)
            .stdin(Stdio::null())
            .stdout(File::create(&out).map_err(|e| BenchError::io("step out", e))?)
            .stderr(File::create(&err).map_err(|e| BenchError::io("step err", e))?)
            .spawn()
            .map_err(|e| BenchError::io("spawn chatr", e))?;
        match wait_with_timeout(child, STEP_TIMEOUT)? {
            Some(s) if s.success() => {
                std::fs::read_to_string(&out).map_err(|e| BenchError::io("read step output", e))
            }
            other => Err(BenchError::Tool {
                tool: format!("chatr {} (as {})", args.join(" "), self.name),
                reason: format!(
                    "{other:?}: {}",
                    std::fs::read_to_string(&err).unwrap_or_default().trim()
                ),
            }),
        }
    }

    fn enrol(&self, bins: &Binaries, server: &LabServer) -> Result<String, BenchError> {
        let connect = server.connect_addr();
        let api = server.api_url();
        let cert = server.cert().to_string_lossy().into_owned();
        self.step(
            bins,
            &[
                "init",
                "--server",
                &connect,
                "--api",
                &api,
                "--server-cert",
                &cert,
            ],
        )?;
        self.step(bins, &["register"])?;
        let whoami = self.step(bins, &["whoami"])?;
        whoami
            .split_whitespace()
            .next()
            .map(str::to_owned)
            .ok_or_else(|| BenchError::Tool {
                tool: "chatr whoami".into(),
                reason: format!("printed {whoami:?}"),
            })
    }

    /// Average RTT to `ip` from this host, ms (ping -c N).
    fn ping_ms(&self, ip: Ipv4Addr, count: u32) -> Result<f64, BenchError> {
        let out = self
            .host
            .netns()
            .command("ping")
            .args([
                "-n",
                "-q",
                "-i",
                "0.2",
                "-c",
                &count.to_string(),
                &ip.to_string(),
            ])
            .output()
            .map_err(|e| BenchError::io("run ping (install iputils-ping)", e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // rtt min/avg/max/mdev = 20.1/20.3/20.9/0.2 ms
        text.lines()
            .find_map(|l| l.split_once(" = ").filter(|(k, _)| k.contains("min/avg")))
            .and_then(|(_, v)| v.split('/').nth(1))
            .and_then(|avg| avg.trim().parse().ok())
            .ok_or_else(|| BenchError::Tool {
                tool: "ping".into(),
                reason: format!("unexpected output: {text}"),
            })
    }
}

/// Two enrolled peers that know each other, and the server.
pub(crate) struct PeerPair {
    pub(crate) alice: Peer,
    pub(crate) bob: Peer,
}

pub(crate) fn enrol_pair(
    bins: &Binaries,
    server: &LabServer,
    alice: Host,
    bob: Host,
    dir: &Path,
) -> Result<PeerPair, BenchError> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::io("create pair dir", e))?;
    let mk = |host: Host, name: &'static str| Peer {
        host,
        home: dir.join(name),
        dir: dir.to_path_buf(),
        name,
    };
    let (alice, bob) = (mk(alice, "alice"), mk(bob, "bob"));
    let a = alice.enrol(bins, server)?;
    let b = bob.enrol(bins, server)?;
    alice.step(bins, &["contacts", "add", &b, "bob"])?;
    bob.step(bins, &["contacts", "add", &a, "alice"])?;
    Ok(PeerPair { alice, bob })
}

/// What one `chatr pipe` pair run produced.
struct PipeRun {
    alice_report: Option<AttemptReport>,
    bob_report: Option<AttemptReport>,
    alice_status: Option<ExitStatus>,
    bob_status: Option<ExitStatus>,
}

/// Alice listens (stdin empty), Bob sends `input` to her. Watches Alice's output.
fn pipe_run(
    bins: &Binaries,
    pair: &PeerPair,
    input: &Path,
    expect_bytes: u64,
    delay_ms: u64,
    timeout: Duration,
) -> Result<PipeRun, BenchError> {
    let dir = &pair.alice.dir;
    let alice_out = dir.join("alice.pipe.out");
    let alice_report = dir.join("alice.report.json");
    let bob_report = dir.join("bob.report.json");
    for f in [&alice_report, &bob_report] {
        let _ = std::fs::remove_file(f);
    }
    let file = |p: &Path| {
        File::create(p).map_err(|e| BenchError::io(format!("create {}", p.display()), e))
    };
    let alice = pair
        .alice
        .command(bins, &["--report"])
        .arg(&alice_report)
        .args(["pipe", "--listen", "--from", "bob"])
        .stdin(Stdio::null())
        .stdout(file(&alice_out)?)
        .stderr(file(&dir.join("alice.pipe.err"))?)
        .spawn()
        .map_err(|e| BenchError::io("spawn chatr pipe --listen", e))?;
    // The listener must be logged in before Bob asks (a few round trips across the wires).
    std::thread::sleep(Duration::from_millis(1500 + 4 * delay_ms));
    let bob = pair
        .bob
        .command(bins, &["--report"])
        .arg(&bob_report)
        .args(["pipe", "alice"])
        .stdin(File::open(input).map_err(|e| BenchError::io("open pipe input", e))?)
        .stdout(file(&dir.join("bob.pipe.out"))?)
        .stderr(file(&dir.join("bob.pipe.err"))?)
        .spawn()
        .map_err(|e| BenchError::io("spawn chatr pipe", e))?;
    // Watch Alice's output grow.
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let size = std::fs::metadata(&alice_out).map(|m| m.len()).unwrap_or(0);
        if size >= expect_bytes && expect_bytes > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
    let bob_status = wait_with_timeout(bob, left)?;
    let alice_status = wait_with_timeout(alice, Duration::from_secs(10))?;
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str::<AttemptReport>(&t).ok())
    };
    Ok(PipeRun {
        alice_report: read(&alice_report),
        bob_report: read(&bob_report),
        alice_status,
        bob_status,
    })
}

pub(crate) fn write_pattern(path: &Path, bytes: u64) -> Result<(), BenchError> {
    use std::io::Write;
    let mut f =
        std::io::BufWriter::new(File::create(path).map_err(|e| BenchError::io("create input", e))?);
    // Incompressible, so nothing on the path can shortcut it.
    let mut words = crate::pattern::Xorshift::new(0x9E37_79B9_7F4A_7C15);
    let mut left = bytes;
    while left > 0 {
        let chunk = words.next().unwrap_or_default().to_le_bytes();
        let n = left.min(8) as usize;
        f.write_all(chunk.get(..n).unwrap_or_default())
            .map_err(|e| BenchError::io("write input", e))?;
        left -= n as u64;
    }
    f.flush().map_err(|e| BenchError::io("write input", e))
}

// ----- punch time -----

/// Options of `punch-time`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct PunchArgs {
    /// One-way delay between the two peers' routers, ms (each uplink gets half).
    #[arg(long, default_value_t = 20)]
    pub delay_ms: u64,
    /// Runs (a fresh pair of NAT sites each); the figure is the median.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// NAT profiles of Alice and Bob.
    #[arg(long, default_value = "port-restricted:port-restricted")]
    pub pair: String,
    /// Directory holding `chatr` and `chatr-server` [default: target/release if built].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// One punch run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PunchRun {
    /// Measured peer-to-peer RTT (sum of both peers' RTT to the server), ms.
    pub rtt_ms: f64,
    /// Alice's (responder) punch_ms.
    pub alice_ms: Option<f64>,
    /// Bob's (initiator) punch_ms.
    pub bob_ms: Option<f64>,
    /// Both reports said direct and both pipes exited 0.
    pub direct: bool,
    /// Why not, if not.
    pub error: Option<String>,
}

/// Figure 4.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PunchReport {
    /// Where and when.
    pub machine: Machine,
    /// Options used.
    pub args: PunchArgs,
    /// Every run.
    pub runs: Vec<PunchRun>,
    /// Median measured RTT, ms.
    pub rtt_ms: f64,
    /// Median of the later of the two sides' punch times, ms.
    pub punch_ms: Option<f64>,
    /// punch_ms ÷ RTT.
    pub rtts: Option<f64>,
    /// 2 RTT + 50 ms.
    pub target_ms: f64,
}

impl PunchReport {
    /// Markdown.
    pub fn render(&self) -> String {
        let mut t = Table::new(&[
            "one-way delay between routers",
            "measured RTT ms (baseline)",
            "punch ms (median, later side)",
            "× RTT",
            "target 2 RTT + 50 ms",
            "direct runs",
        ]);
        let direct = self.runs.iter().filter(|r| r.direct).count();
        t.row(vec![
            format!("{} ms", self.args.delay_ms),
            format!("{:.1}", self.rtt_ms),
            self.punch_ms.map_or("-".into(), |p| format!("{p:.0}")),
            self.rtts.map_or("-".into(), |r| format!("{r:.2}")),
            format!("{:.0} ms", self.target_ms),
            format!("{direct}/{}", self.runs.len()),
        ]);
        let mut runs = Table::new(&[
            "run",
            "RTT ms",
            "alice (responder) ms",
            "bob (initiator) ms",
            "direct",
        ]);
        for (i, r) in self.runs.iter().enumerate() {
            runs.row(vec![
                (i + 1).to_string(),
                format!("{:.1}", r.rtt_ms),
                r.alice_ms.map_or("-".into(), |v| format!("{v:.0}")),
                r.bob_ms.map_or("-".into(), |v| format!("{v:.0}")),
                if r.direct {
                    "yes".into()
                } else {
                    format!("no: {}", r.error.clone().unwrap_or_default())
                },
            ]);
        }
        format!(
            "{}\nPair {}.\n\n{}",
            t.render(),
            self.args.pair,
            runs.render()
        )
    }
}

fn parse_pair(s: &str) -> Result<(NatProfile, NatProfile), BenchError> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| BenchError::Lab(format!("--pair {s:?}: expected PROFILE:PROFILE")))?;
    Ok((a.parse().map_err(lab_err)?, b.parse().map_err(lab_err)?))
}

/// Runs figure 4.
pub fn punch_time(args: &PunchArgs) -> Result<PunchReport, BenchError> {
    let machine = Machine::detect();
    let bins = binaries(args.bin_dir.as_deref())?;
    let (pa, pb) = parse_pair(&args.pair)?;
    let work = tempfile::Builder::new()
        .prefix("chatr-bench-lab-")
        .tempdir()
        .map_err(|e| BenchError::io("temp dir", e))?;
    let _guard = crate::lab::exclusive();
    let mut lab = Lab::new().map_err(lab_err)?;
    let srv = lab.add_public_host("srv").map_err(lab_err)?;
    let server = start_server(&bins, &srv, &work.path().join("server"), &[])?;
    let link = LinkCondition::delay_ms(args.delay_ms / 2);
    let input = work.path().join("input");
    write_pattern(&input, 1024)?;
    let mut runs = Vec::new();
    for k in 0..args.runs.max(1) {
        let mut sa = lab.add_site(&format!("a{k}"), pa, link).map_err(lab_err)?;
        let mut sb = lab.add_site(&format!("b{k}"), pb, link).map_err(lab_err)?;
        let alice = lab.add_host(&mut sa, "alice").map_err(lab_err)?;
        let bob = lab.add_host(&mut sb, "bob").map_err(lab_err)?;
        let pair = enrol_pair(
            &bins,
            &server,
            alice,
            bob,
            &work.path().join(format!("run{k}")),
        )?;
        let rtt_ms = pair.alice.ping_ms(server.ip(), 10)? + pair.bob.ping_ms(server.ip(), 10)?;
        let run = pipe_run(
            &bins,
            &pair,
            &input,
            1024,
            args.delay_ms,
            Duration::from_secs(60),
        )?;
        // Whole milliseconds: exact in an f64.
        let punch =
            |r: &Option<AttemptReport>| r.as_ref().and_then(|r| r.punch_ms).map(|ms| ms as f64);
        let direct = [&run.alice_report, &run.bob_report]
            .iter()
            .all(|r| r.as_ref().is_some_and(AttemptReport::is_direct))
            && run.alice_status.is_some_and(|s| s.success())
            && run.bob_status.is_some_and(|s| s.success());
        let error = (!direct).then(|| {
            [&run.alice_report, &run.bob_report]
                .iter()
                .filter_map(|r| r.as_ref().and_then(|r| r.error.clone()))
                .chain([format!(
                    "exit alice {:?} bob {:?}",
                    run.alice_status, run.bob_status
                )])
                .collect::<Vec<_>>()
                .join("; ")
        });
        let r = PunchRun {
            rtt_ms,
            alice_ms: punch(&run.alice_report),
            bob_ms: punch(&run.bob_report),
            direct,
            error,
        };
        eprintln!(
            "punch-time run {}: RTT {:.1} ms, alice {:?} ms, bob {:?} ms, direct {}",
            k + 1,
            r.rtt_ms,
            r.alice_ms,
            r.bob_ms,
            r.direct
        );
        runs.push(r);
    }
    drop(server);
    drop(lab);
    let rtt_ms = median(&runs.iter().map(|r| r.rtt_ms).collect::<Vec<_>>()).unwrap_or(0.0);
    let later: Vec<f64> = runs
        .iter()
        .filter(|r| r.direct)
        .filter_map(|r| match (r.alice_ms, r.bob_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        })
        .collect();
    let punch_ms = median(&later);
    Ok(PunchReport {
        machine,
        args: args.clone(),
        rtts: punch_ms.map(|p| p / rtt_ms.max(1e-9)),
        target_ms: 2.0 * rtt_ms + 50.0,
        punch_ms,
        rtt_ms,
        runs,
    })
}
