//! Figure 5: link throughput over **kernel-only** lab paths, beside iperf3 TCP and iroh.
//!
//! Every path is built from veths, bridges and nftables NATs only: the lab's uplinks get
//! a [`LinkCondition`] with zero delay, which the lab wires as a plain veth into the
//! public bridge, with **no userspace delay wire** (that wire caps flows near 90 MiB/s,
//! so it would measure itself). Loss comes from nftables `numgen` on both ends of an
//! uplink. The paths:
//!
//! | name | Alice (listener, receives) | Bob (sender) |
//! |---|---|---|
//! | `symmetric-public` | public host | symmetric NAT |
//! | `same-lan` | LAN of a port-restricted NAT | the same LAN |
//! | `restricted1-public` | public host | port-restricted NAT, 1 % loss |
//! | `cgnat2-public` | public host | CGNAT, 2 % loss |
//! | `restricted1-cgnat2` | port-restricted NAT, 1 % loss | CGNAT, 2 % loss |
//! | `symmetric-symmetric` | symmetric NAT | symmetric NAT: no direct path, so both Chatr and iroh relay through the server's host |
//!
//! Relayed figures: on `symmetric-symmetric` Chatr links over its UDP relay by itself;
//! `--variant tls,CHATR_PATH=relay-tls` adds its TLS relay in the same runs, and on a
//! direct path `--variant relay,CHATR_PATH=relay` pins the UDP relay beside the direct
//! link. The server's CPU (`/proc/<pid>/stat`, user + system) is sampled around every
//! Chatr run, and iroh's relay process around every iroh run, so the tables give server
//! CPU seconds per relayed GiB beside each other.
//!
//! For each path, size and run, in rotating order so drift hits all three alike:
//!
//! - **TCP**: `iperf3 -c alice -n SIZE` from Bob (where a TCP connection can reach Alice:
//!   not into a NAT, which would need port forwarding).
//! - **iroh**: `iroh-probe dial` from Bob to `iroh-probe listen` at Alice, through
//!   `iroh-probe relay` on the server's host (where the Connect server sits); its own
//!   stream rate (set-up excluded) from its JSON line. Only runs on a direct path count.
//! - **Chatr**: `chatr pipe alice < input` at Bob, `chatr pipe --listen > output` at
//!   Alice (the real release binaries). The bench polls the output file every
//!   millisecond and times first byte → last byte, so login and punching are not
//!   counted; then it times how long each process takes to exit after the last byte
//!   (issue 12's 45 s hang), up to [`EXIT_WAIT`].
//!
//! CPU is user + system seconds of the whole process (`wait4` rusage) per GiB moved: for
//! Chatr both processes, for iroh the dialer (sender) and the long-lived listener's
//! `/proc/<pid>/stat` difference across the run (receiver). Set-up is included for both
//! tools, so read the CPU columns at 256 MiB. Input and output live in `/dev/shm`, so the
//! disk is not measured either.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::bench::BenchError;
use crate::bench::lab::{PeerPair, binaries, enrol_pair, lab_err, start_server, write_pattern};
use crate::bench::report::{Table, pct};
use crate::bench::stats::median;
use crate::bench::sys::{Machine, ProcSample, clock_ticks_per_sec};
use chatr_client::AttemptReport;

use crate::lab::matrix::Binaries;
use crate::lab::{Host, Lab, LinkCondition, NatProfile, Netns};

/// How long the bench waits for both processes to exit after the last byte (longer than
/// the 45 s QUIC idle timeout, so a hang on it shows as its real length).
pub const EXIT_WAIT: Duration = Duration::from_secs(50);

/// Default location of the iroh baseline tool (see `../shared/tools/iroh-probe`).
const IROH_DEFAULT: &str = "/tmp/iroh-probe-target/release/iroh-probe";

/// The iroh relay's HTTPS port (fixed by iroh-probe).
const IROH_RELAY_PORT: u16 = 3341;

const MIB: u64 = 1024 * 1024;

/// One lab path of the figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum LinkPath {
    /// Bob behind a symmetric NAT sends to Alice, a public host; no loss.
    #[value(name = "symmetric-public")]
    SymmetricPublic,
    /// Both on the LAN of one port-restricted NAT; no loss.
    #[value(name = "same-lan")]
    SameLan,
    /// Bob behind a port-restricted NAT whose uplink loses 1 % each way → public Alice.
    #[value(name = "restricted1-public")]
    Restricted1Public,
    /// Bob behind a CGNAT whose uplink loses 2 % each way → public Alice.
    #[value(name = "cgnat2-public")]
    Cgnat2Public,
    /// Bob behind a CGNAT (2 % loss) → Alice behind a port-restricted NAT (1 % loss).
    #[value(name = "restricted1-cgnat2")]
    Restricted1Cgnat2,
    /// Both behind symmetric NATs; no loss. No direct path: relayed.
    #[value(name = "symmetric-symmetric")]
    SymmetricSymmetric,
}

impl LinkPath {
    /// Every path, in table order.
    pub const ALL: [LinkPath; 6] = [
        LinkPath::SymmetricPublic,
        LinkPath::SameLan,
        LinkPath::Restricted1Public,
        LinkPath::Cgnat2Public,
        LinkPath::Restricted1Cgnat2,
        LinkPath::SymmetricSymmetric,
    ];

    /// A short description for the tables.
    pub fn label(self) -> &'static str {
        match self {
            LinkPath::SymmetricPublic => "symmetric NAT → public host",
            LinkPath::SameLan => "same LAN",
            LinkPath::Restricted1Public => "port-restricted (1 % loss) → public",
            LinkPath::Cgnat2Public => "CGNAT (2 % loss) → public",
            LinkPath::Restricted1Cgnat2 => "CGNAT (2 %) → port-restricted (1 %)",
            LinkPath::SymmetricSymmetric => "symmetric ↔ symmetric (relayed)",
        }
    }

    /// Whether the tools must link directly here (else the path only allows a relay).
    pub fn expects_direct(self) -> bool {
        self != LinkPath::SymmetricSymmetric
    }

    /// Whether frames are dropped on the path.
    pub fn lossy(self) -> bool {
        matches!(
            self,
            LinkPath::Restricted1Public | LinkPath::Cgnat2Public | LinkPath::Restricted1Cgnat2
        )
    }

    /// Whether a TCP connection from Bob can reach Alice (she is not behind a NAT from
    /// Bob's side).
    fn tcp_reachable(self) -> bool {
        !matches!(
            self,
            LinkPath::Restricted1Cgnat2 | LinkPath::SymmetricSymmetric
        )
    }

    fn short(self) -> &'static str {
        match self {
            LinkPath::SymmetricPublic => "sp",
            LinkPath::SameLan => "sl",
            LinkPath::Restricted1Public => "rp",
            LinkPath::Cgnat2Public => "cp",
            LinkPath::Restricted1Cgnat2 => "rc",
            LinkPath::SymmetricSymmetric => "ss",
        }
    }

    /// Builds the path's sites and returns Alice and Bob, with the router Bob's LAN
    /// hangs off (`None` for a public Bob).
    pub fn build(self, lab: &mut Lab) -> Result<BuiltPath, BenchError> {
        let s = self.short();
        let ideal = LinkCondition::IDEAL;
        let site = |lab: &mut Lab, side: &str, profile: NatProfile, link: LinkCondition| {
            let mut site = lab
                .add_site(&format!("{s}-{side}"), profile, link)
                .map_err(lab_err)?;
            let host = lab.add_host(&mut site, side).map_err(lab_err)?;
            Ok::<_, BenchError>((host, site.routers().first().cloned()))
        };
        let (alice, bob) = match self {
            LinkPath::SymmetricPublic => (
                site(lab, "a", NatProfile::None, ideal)?,
                site(lab, "b", NatProfile::Symmetric, ideal)?,
            ),
            LinkPath::SameLan => {
                let mut lan = lab
                    .add_site(&format!("{s}-lan"), NatProfile::PortRestricted, ideal)
                    .map_err(lab_err)?;
                let a = lab.add_host(&mut lan, "a").map_err(lab_err)?;
                let b = lab.add_host(&mut lan, "b").map_err(lab_err)?;
                let router = lan.routers().first().cloned();
                ((a, router.clone()), (b, router))
            }
            LinkPath::Restricted1Public => (
                site(lab, "a", NatProfile::None, ideal)?,
                site(lab, "b", NatProfile::PortRestricted, ideal.with_loss(1))?,
            ),
            LinkPath::Cgnat2Public => (
                site(lab, "a", NatProfile::None, ideal)?,
                site(lab, "b", NatProfile::Cgnat, ideal.with_loss(2))?,
            ),
            LinkPath::Restricted1Cgnat2 => (
                site(lab, "a", NatProfile::PortRestricted, ideal.with_loss(1))?,
                site(lab, "b", NatProfile::Cgnat, ideal.with_loss(2))?,
            ),
            LinkPath::SymmetricSymmetric => (
                site(lab, "a", NatProfile::Symmetric, ideal)?,
                site(lab, "b", NatProfile::Symmetric, ideal)?,
            ),
        };
        Ok(BuiltPath {
            alice: alice.0,
            bob: bob.0,
            bob_router: bob.1,
        })
    }
}

/// The hosts of one built path.
#[derive(Debug)]
pub struct BuiltPath {
    /// The listener (receives).
    pub alice: Host,
    /// The sender.
    pub bob: Host,
    /// The router Bob's LAN hangs off (`None` for a public Bob).
    pub bob_router: Option<Arc<Netns>>,
}

/// Makes Bob's LAN router lose the next QUIC Initial packet it forwards (and only that one),
/// as the lossy path sometimes does during set-up: `@th,64,4` is the high nibble of the
/// first UDP payload byte, `0xc` a long-header Initial; the quota lets one such packet
/// (≤ 1500 bytes) match and then none, until the table is loaded again.
fn lose_next_initial(router: &Netns) -> Result<(), BenchError> {
    router
        .nft(
            "table inet chatrbench_initial
delete table inet chatrbench_initial
table inet chatrbench_initial {
  chain forward {
    type filter hook forward priority filter - 10; policy accept;
    meta l4proto udp @th,64,4 12 quota until 2000 bytes drop
  }
}
",
        )
        .map_err(lab_err)
}

/// Options of `throughput`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct ThroughputArgs {
    /// Paths to measure [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub paths: Vec<LinkPath>,
    /// Transfer sizes in MiB.
    #[arg(long, value_delimiter = ',', default_value = "16,256")]
    pub sizes: Vec<u64>,
    /// Runs per path and size above 16 MiB (figures are medians).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Runs per path and size up to 16 MiB (the tail: each run is checked).
    #[arg(long, default_value_t = 10)]
    pub small_runs: usize,
    /// The iroh-probe binary [default: /tmp/iroh-probe-target/release/iroh-probe if built].
    #[arg(long)]
    pub iroh: Option<PathBuf>,
    /// Skip iroh even if iroh-probe is built.
    #[arg(long)]
    pub no_iroh: bool,
    /// Skip iperf3.
    #[arg(long)]
    pub no_tcp: bool,
    /// Directory holding `chatr` and `chatr-server` [default: target/release if built].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Keep homes and logs here instead of a temporary directory.
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// Before every Chatr run, make Bob's NAT lose his first QUIC Initial (replays the
    /// set-up loss behind issue 12's exit hang; paths where Bob is behind a NAT).
    #[arg(long)]
    pub lose_first_initial: bool,
    /// Seconds to wait for both Chatr processes to exit after the last byte.
    #[arg(long, default_value_t = EXIT_WAIT.as_secs())]
    pub exit_wait_s: u64,
    /// Also run another Chatr in every run, for before/after figures from the same run:
    /// `LABEL[@BIN_DIR][,VAR=VALUE…]` (its `chatr` from BIN_DIR, the environment added).
    #[arg(long = "variant")]
    pub variants: Vec<Variant>,
}

/// Another Chatr measured beside the main one (see `--variant`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Variant {
    /// Its name in the tables.
    pub label: String,
    /// Where its `chatr` is (default: the main one).
    pub bin_dir: Option<PathBuf>,
    /// Environment added to both of its processes.
    pub env: Vec<(String, String)>,
}

impl std::str::FromStr for Variant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let head = parts.next().unwrap_or_default();
        let (label, bin_dir) = match head.split_once('@') {
            Some((label, dir)) => (label, Some(PathBuf::from(dir))),
            None => (head, None),
        };
        if label.is_empty() {
            return Err(format!("variant {s:?}: empty label"));
        }
        let env = parts
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| format!("variant {s:?}: {kv:?} is not VAR=VALUE"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Variant {
            label: label.to_owned(),
            bin_dir,
            env,
        })
    }
}

impl ThroughputArgs {
    /// The arguments for a quick functional check: one clean path, one small size, one run.
    pub fn smoke(bin_dir: Option<PathBuf>) -> Self {
        ThroughputArgs {
            paths: vec![LinkPath::SymmetricPublic],
            sizes: vec![4],
            runs: 1,
            small_runs: 1,
            iroh: None,
            no_iroh: false,
            no_tcp: false,
            bin_dir,
            keep: None,
            lose_first_initial: false,
            exit_wait_s: EXIT_WAIT.as_secs(),
            variants: Vec::new(),
        }
    }

    fn runs_for(&self, mib: u64) -> usize {
        if mib <= 16 {
            self.small_runs.max(1)
        } else {
            self.runs.max(1)
        }
    }
}

/// Which tool a sample comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Tool {
    /// iperf3 TCP.
    Tcp,
    /// iroh-probe.
    Iroh,
    /// `chatr pipe`.
    Chatr,
}

/// One transfer by one tool.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Sample {
    /// Transfer rate, MiB/s.
    pub mib_s: Option<f64>,
    /// Transfer time, s (first → last byte for Chatr; the stream's own time for iroh and TCP).
    pub secs: Option<f64>,
    /// Sender's exit after the last byte, s.
    pub send_exit_s: Option<f64>,
    /// Receiver's exit after the last byte, s (Chatr only: iroh's listener stays up).
    pub recv_exit_s: Option<f64>,
    /// Sender CPU seconds (user + system).
    pub send_cpu_s: Option<f64>,
    /// Receiver CPU seconds.
    pub recv_cpu_s: Option<f64>,
    /// Chatr's sender CPU between first and last byte at the receiver, s.
    pub send_cpu_transfer_s: Option<f64>,
    /// Chatr's receiver CPU between first and last byte, s.
    pub recv_cpu_transfer_s: Option<f64>,
    /// Chatr: both sides linked (directly, where the path allows it) and both processes
    /// exited 0.
    pub clean_exit: Option<bool>,
    /// Chatr: the path Bob's link ended on (`direct-public`, `relay-udp`, …); iroh: `direct`
    /// or `relay`.
    pub path_class: Option<String>,
    /// CPU seconds the relaying server used during the run (Chatr's `chatr-server`,
    /// iroh's relay).
    pub server_cpu_s: Option<f64>,
    /// UDP datagrams the kernel dropped for want of socket buffer during the run, both hosts
    /// (`RcvbufErrors` + `SndbufErrors` of `/proc/net/snmp`; loss on the path is not counted).
    pub udp_buffer_drops: Option<u64>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// One run: the three tools on one path and size.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    /// Which path.
    pub path: LinkPath,
    /// MiB moved.
    pub mib: u64,
    /// iperf3 (absent when TCP cannot reach Alice or was skipped).
    pub tcp: Option<Sample>,
    /// iroh (absent when skipped).
    pub iroh: Option<Sample>,
    /// Chatr.
    pub chatr: Sample,
    /// The `--variant`s, in their order.
    pub variants: Vec<Sample>,
}

/// Figure 5.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ThroughputReport {
    /// Where and when.
    pub machine: Machine,
    /// Options used.
    pub args: ThroughputArgs,
    /// Every run.
    pub runs: Vec<Run>,
    /// Notes (a tool missing, …).
    pub notes: Vec<String>,
}

/// Medians and extremes of one path and size.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Median iperf3 MiB/s.
    pub tcp: Option<f64>,
    /// Median iroh MiB/s.
    pub iroh: Option<f64>,
    /// Median Chatr MiB/s.
    pub chatr: Option<f64>,
    /// Slowest Chatr transfer ÷ median iroh transfer time.
    pub worst_vs_iroh_time: Option<f64>,
    /// Longest exit after the last byte, Chatr sender and receiver (s).
    pub chatr_exit_max: (Option<f64>, Option<f64>),
    /// Longest exit of iroh's dialer after its last byte (s).
    pub iroh_exit_max: Option<f64>,
    /// Median CPU s/GiB of Chatr's sender and receiver.
    pub chatr_cpu: (Option<f64>, Option<f64>),
    /// Median CPU s/GiB of iroh's sender and receiver.
    pub iroh_cpu: (Option<f64>, Option<f64>),
    /// Median CPU s/GiB of the relaying server: Chatr's `chatr-server`, iroh's relay.
    pub server_cpu: (Option<f64>, Option<f64>),
    /// Where Chatr's links ended, e.g. `relay-udp` (the most common; `mixed` when not all).
    pub chatr_path: Option<String>,
    /// Chatr runs that failed (no figure, not direct, or a non-zero exit).
    pub chatr_failures: usize,
    /// Runs.
    pub runs: usize,
}

/// The path every sample ended on, `mixed` when they differ, `None` when none said.
fn common_path<'a>(samples: impl Iterator<Item = &'a Sample>) -> Option<String> {
    let mut paths = samples.filter_map(|s| s.path_class.clone());
    let first = paths.next()?;
    Some(if paths.all(|p| p == first) {
        first
    } else {
        "mixed".to_owned()
    })
}

fn per_gib(cpu: Option<f64>, mib: u64) -> Option<f64> {
    cpu.map(|c| c * 1024.0 / mib as f64)
}

fn max_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    values
        .flatten()
        .fold(None, |m, v| Some(m.map_or(v, |m: f64| m.max(v))))
}

impl ThroughputReport {
    /// The runs of one path and size.
    pub fn runs_of(&self, path: LinkPath, mib: u64) -> impl Iterator<Item = &Run> {
        self.runs
            .iter()
            .filter(move |r| r.path == path && r.mib == mib)
    }

    /// Medians and extremes of one path and size.
    pub fn summary(&self, path: LinkPath, mib: u64) -> Summary {
        let runs: Vec<&Run> = self.runs_of(path, mib).collect();
        let med = |f: &dyn Fn(&Run) -> Option<f64>| {
            median(&runs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
        };
        let iroh_secs = med(&|r| r.iroh.as_ref().and_then(|s| s.secs));
        let worst = max_of(runs.iter().map(|r| r.chatr.secs));
        Summary {
            tcp: med(&|r| r.tcp.as_ref().and_then(|s| s.mib_s)),
            iroh: med(&|r| r.iroh.as_ref().and_then(|s| s.mib_s)),
            chatr: med(&|r| r.chatr.mib_s),
            worst_vs_iroh_time: worst.zip(iroh_secs).map(|(w, i)| w / i.max(1e-9)),
            chatr_exit_max: (
                max_of(runs.iter().map(|r| r.chatr.send_exit_s)),
                max_of(runs.iter().map(|r| r.chatr.recv_exit_s)),
            ),
            iroh_exit_max: max_of(
                runs.iter()
                    .map(|r| r.iroh.as_ref().and_then(|s| s.send_exit_s)),
            ),
            chatr_cpu: (
                med(&|r| per_gib(r.chatr.send_cpu_s, mib)),
                med(&|r| per_gib(r.chatr.recv_cpu_s, mib)),
            ),
            iroh_cpu: (
                med(&|r| per_gib(r.iroh.as_ref().and_then(|s| s.send_cpu_s), mib)),
                med(&|r| per_gib(r.iroh.as_ref().and_then(|s| s.recv_cpu_s), mib)),
            ),
            server_cpu: (
                med(&|r| per_gib(r.chatr.server_cpu_s, mib)),
                med(&|r| per_gib(r.iroh.as_ref().and_then(|s| s.server_cpu_s), mib)),
            ),
            chatr_path: common_path(runs.iter().map(|r| &r.chatr)),
            chatr_failures: runs
                .iter()
                .filter(|r| r.chatr.error.is_some() || r.chatr.clean_exit != Some(true))
                .count(),
            runs: runs.len(),
        }
    }

    /// Markdown: the summary table, then every run.
    pub fn render(&self) -> String {
        let f0 = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0}"));
        let f2 = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2}"));
        let ratio = |a: Option<f64>, b: Option<f64>| {
            a.zip(b).map_or("–".into(), |(a, b)| pct(a / b.max(1e-9)))
        };
        let mut t = Table::new(&[
            "path",
            "MiB",
            "TCP MiB/s",
            "iroh MiB/s",
            "Chatr MiB/s",
            "Chatr ÷ iroh",
            "Chatr ÷ TCP",
            "slowest Chatr ÷ iroh time",
            "exit after last byte, s (Chatr send/recv; iroh)",
            "CPU s/GiB Chatr send/recv",
            "CPU s/GiB iroh send/recv",
            "server CPU s/GiB Chatr / iroh relay",
            "Chatr path",
            "Chatr failed",
        ]);
        for path in LinkPath::ALL {
            for &mib in &self.args.sizes {
                let s = self.summary(path, mib);
                if s.runs == 0 {
                    continue;
                }
                t.row(vec![
                    path.label().into(),
                    mib.to_string(),
                    f0(s.tcp),
                    f0(s.iroh),
                    f0(s.chatr),
                    ratio(s.chatr, s.iroh),
                    ratio(s.chatr, s.tcp),
                    s.worst_vs_iroh_time
                        .map_or("–".into(), |v| format!("{v:.2}×")),
                    format!(
                        "{} / {}; {}",
                        f2(s.chatr_exit_max.0),
                        f2(s.chatr_exit_max.1),
                        f2(s.iroh_exit_max)
                    ),
                    format!("{} / {}", f2(s.chatr_cpu.0), f2(s.chatr_cpu.1)),
                    format!("{} / {}", f2(s.iroh_cpu.0), f2(s.iroh_cpu.1)),
                    format!("{} / {}", f2(s.server_cpu.0), f2(s.server_cpu.1)),
                    s.chatr_path.clone().unwrap_or_else(|| "–".into()),
                    format!("{}/{}", s.chatr_failures, s.runs),
                ]);
            }
        }
        let mut runs = Table::new(&[
            "path",
            "MiB",
            "TCP MiB/s",
            "iroh MiB/s",
            "iroh s",
            "Chatr MiB/s",
            "Chatr s",
            "Chatr path",
            "Chatr exit s send/recv",
            "Chatr CPU s send/recv",
            "iroh CPU s send/recv",
            "UDP buffer drops Chatr / iroh",
            "note",
        ]);
        for r in &self.runs {
            let tool = |s: &Option<Sample>| s.as_ref().and_then(|s| s.mib_s);
            let note: Vec<String> = [
                r.tcp
                    .as_ref()
                    .and_then(|s| s.error.clone())
                    .map(|e| format!("tcp: {e}")),
                r.iroh
                    .as_ref()
                    .and_then(|s| s.error.clone())
                    .map(|e| format!("iroh: {e}")),
                r.chatr.error.clone().map(|e| format!("chatr: {e}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            runs.row(vec![
                r.path.label().into(),
                r.mib.to_string(),
                f0(tool(&r.tcp)),
                f0(tool(&r.iroh)),
                f2(r.iroh.as_ref().and_then(|s| s.secs)),
                f0(r.chatr.mib_s),
                f2(r.chatr.secs),
                r.chatr.path_class.clone().unwrap_or_else(|| "–".into()),
                format!("{} / {}", f2(r.chatr.send_exit_s), f2(r.chatr.recv_exit_s)),
                format!("{} / {}", f2(r.chatr.send_cpu_s), f2(r.chatr.recv_cpu_s)),
                format!(
                    "{} / {}",
                    f2(r.iroh.as_ref().and_then(|s| s.send_cpu_s)),
                    f2(r.iroh.as_ref().and_then(|s| s.recv_cpu_s))
                ),
                format!(
                    "{} / {}",
                    r.chatr
                        .udp_buffer_drops
                        .map_or("–".into(), |d| d.to_string()),
                    r.iroh
                        .as_ref()
                        .and_then(|s| s.udp_buffer_drops)
                        .map_or("–".into(), |d| d.to_string())
                ),
                note.join("; "),
            ]);
        }
        let notes = self
            .notes
            .iter()
            .map(|n| format!("- {n}\n"))
            .collect::<String>();
        format!(
            "{}\n{notes}\n{}{}",
            t.render(),
            self.render_variants(),
            runs.render()
        )
    }

    /// The main Chatr beside each `--variant`, from the same runs (empty without variants).
    fn render_variants(&self) -> String {
        if self.args.variants.is_empty() {
            return String::new();
        }
        let f2 = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2}"));
        let mut t = Table::new(&[
            "path",
            "MiB",
            "Chatr",
            "MiB/s",
            "÷ iroh",
            "slowest ÷ iroh time",
            "exit max s send/recv",
            "CPU s/GiB send/recv",
            "server CPU s/GiB",
            "path",
            "failed",
        ]);
        let labels: Vec<String> = std::iter::once("main".to_owned())
            .chain(self.args.variants.iter().map(|v| v.label.clone()))
            .collect();
        for path in LinkPath::ALL {
            for &mib in &self.args.sizes {
                let runs: Vec<&Run> = self.runs_of(path, mib).collect();
                if runs.is_empty() {
                    continue;
                }
                let iroh_mib = median(
                    &runs
                        .iter()
                        .filter_map(|r| r.iroh.as_ref().and_then(|s| s.mib_s))
                        .collect::<Vec<_>>(),
                );
                let iroh_secs = median(
                    &runs
                        .iter()
                        .filter_map(|r| r.iroh.as_ref().and_then(|s| s.secs))
                        .collect::<Vec<_>>(),
                );
                for (i, label) in labels.iter().enumerate() {
                    let samples: Vec<&Sample> = runs
                        .iter()
                        .filter_map(|r| {
                            if i == 0 {
                                Some(&r.chatr)
                            } else {
                                r.variants.get(i - 1)
                            }
                        })
                        .collect();
                    let med = |g: &dyn Fn(&Sample) -> Option<f64>| {
                        median(&samples.iter().filter_map(|s| g(s)).collect::<Vec<_>>())
                    };
                    let mib_s = med(&|s| s.mib_s);
                    let worst = max_of(samples.iter().map(|s| s.secs));
                    let failed = samples
                        .iter()
                        .filter(|s| s.error.is_some() || s.clean_exit != Some(true))
                        .count();
                    t.row(vec![
                        path.label().into(),
                        mib.to_string(),
                        label.clone(),
                        mib_s.map_or("–".into(), |v| format!("{v:.0}")),
                        mib_s
                            .zip(iroh_mib)
                            .map_or("–".into(), |(c, i)| pct(c / i.max(1e-9))),
                        worst
                            .zip(iroh_secs)
                            .map_or("–".into(), |(w, i)| format!("{:.2}×", w / i.max(1e-9))),
                        format!(
                            "{} / {}",
                            f2(max_of(samples.iter().map(|s| s.send_exit_s))),
                            f2(max_of(samples.iter().map(|s| s.recv_exit_s)))
                        ),
                        format!(
                            "{} / {}",
                            f2(med(&|s| per_gib(s.send_cpu_s, mib))),
                            f2(med(&|s| per_gib(s.recv_cpu_s, mib)))
                        ),
                        f2(med(&|s| per_gib(s.server_cpu_s, mib))),
                        common_path(samples.iter().copied()).unwrap_or_else(|| "–".into()),
                        format!("{failed}/{}", samples.len()),
                    ]);
                }
            }
        }
        format!("{}\n", t.render())
    }
}

// ----- child processes, watched without blocking -----

/// A child whose exit is collected with `wait4`, which also yields its CPU time.
struct Watched {
    child: Child,
    exit: Option<Exit>,
}

#[derive(Debug, Clone, Copy)]
struct Exit {
    at: Instant,
    /// The exit code; `None` when a signal ended it.
    code: Option<i32>,
    cpu_s: f64,
}

impl Watched {
    fn new(child: Child) -> Self {
        Watched { child, exit: None }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Collects the exit if it happened; true once exited.
    fn poll(&mut self) -> bool {
        if self.exit.is_some() {
            return true;
        }
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain data that wait4 fills in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: waits (without blocking) for our own child; both pointers are live.
        let rc = unsafe { libc::wait4(pid, &raw mut status, libc::WNOHANG, &raw mut usage) };
        if rc != pid {
            return false;
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        self.exit = Some(Exit {
            at: Instant::now(),
            code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
            cpu_s: secs(usage.ru_utime) + secs(usage.ru_stime),
        });
        true
    }

    /// Kills the child if it still runs and collects it.
    fn kill(&mut self) {
        if !self.poll() {
            let _ = self.child.kill();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self.poll() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(cmd: &mut Command, what: &str) -> Result<Watched, BenchError> {
    cmd.spawn()
        .map(Watched::new)
        .map_err(|e| BenchError::io(format!("spawn {what}"), e))
}

fn create(path: &Path) -> Result<File, BenchError> {
    File::create(path).map_err(|e| BenchError::io(format!("create {}", path.display()), e))
}

fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn cpu_secs(pid: u32) -> Option<f64> {
    ProcSample::read(pid)
        .ok()
        .map(|s| s.cpu_ticks as f64 / clock_ticks_per_sec())
}

/// Waits until `path` contains `needle` (or `child` exits, or the time is up).
fn wait_for_text(
    path: &Path,
    needle: &str,
    child: &mut Watched,
    timeout: Duration,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        if read_text(path).contains(needle) {
            return Ok(());
        }
        if child.poll() {
            return Err(BenchError::Tool {
                tool: path.display().to_string(),
                reason: format!(
                    "exited before printing {needle:?}: {}",
                    read_text(path).trim()
                ),
            });
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "no {needle:?} in {} after {timeout:?}",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ----- the three tools -----

/// `RcvbufErrors + SndbufErrors` of the UDP counters in `host`'s namespace.
fn udp_buffer_errors(host: &Host) -> Option<u64> {
    let out = host
        .netns()
        .command("cat")
        .arg("/proc/net/snmp")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp: "));
    let names: Vec<&str> = udp.next()?.split_whitespace().collect();
    let values: Vec<&str> = udp.next()?.split_whitespace().collect();
    let field = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| values.get(i))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(field("RcvbufErrors")? + field("SndbufErrors")?)
}

fn buffer_errors(pair: &PeerPair) -> Option<u64> {
    Some(udp_buffer_errors(&pair.alice.host)? + udp_buffer_errors(&pair.bob.host)?)
}

/// `chatr pipe` from Bob to Alice; see the module docs.
#[allow(clippy::too_many_arguments)]
fn chatr_run(
    bins: &Binaries,
    env: &[(String, String)],
    pair: &PeerPair,
    input: &Path,
    bytes: u64,
    out_dir: &Path,
    exit_wait: Duration,
    (server_pid, must_be_direct): (u32, bool),
) -> Result<Sample, BenchError> {
    let dir = &pair.alice.dir;
    let out = out_dir.join("alice.pipe.out");
    let (alice_report, bob_report) = (dir.join("alice.report.json"), dir.join("bob.report.json"));
    let (alice_err, bob_err) = (dir.join("alice.pipe.err"), dir.join("bob.pipe.err"));
    for f in [&alice_report, &bob_report, &out] {
        let _ = std::fs::remove_file(f);
    }
    let drops_before = buffer_errors(pair);
    let server_before = cpu_secs(server_pid);
    let mut alice = spawn(
        pair.alice
            .command(bins, &["--report"])
            .arg(&alice_report)
            .args(["pipe", "--listen", "--from", "bob"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(create(&out)?)
            .stderr(create(&alice_err)?),
        "chatr pipe --listen",
    )?;
    wait_for_text(
        &alice_err,
        "waiting for a link",
        &mut alice,
        Duration::from_secs(30),
    )?;
    let mut bob = spawn(
        pair.bob
            .command(bins, &["--report"])
            .arg(&bob_report)
            .args(["pipe", "alice"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(File::open(input).map_err(|e| BenchError::io("open pipe input", e))?)
            .stdout(create(&dir.join("bob.pipe.out"))?)
            .stderr(create(&bob_err)?),
        "chatr pipe",
    )?;
    // A generous floor of 1 MiB/s, plus set-up.
    let transfer_deadline = Instant::now() + Duration::from_secs(30 + bytes / MIB);
    let mut first: Option<(Instant, Option<f64>, Option<f64>)> = None;
    let mut last: Option<(Instant, Option<f64>, Option<f64>)> = None;
    loop {
        let now = Instant::now();
        let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        if size > 0 && first.is_none() {
            first = Some((now, cpu_secs(bob.pid()), cpu_secs(alice.pid())));
        }
        if size >= bytes && last.is_none() {
            last = Some((now, cpu_secs(bob.pid()), cpu_secs(alice.pid())));
        }
        let done = bob.poll() & alice.poll();
        if done {
            break;
        }
        let limit = last.map_or(transfer_deadline, |(at, ..)| at + exit_wait);
        if now > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bob.kill();
    alice.kill();
    let server_after = cpu_secs(server_pid);
    let report = |p: &Path| serde_json::from_str::<AttemptReport>(&read_text(p)).ok();
    let reports = [report(&alice_report), report(&bob_report)];
    // Where a link was at the end: the pipe's transfer says, else the link report (a link
    // may come up relayed and move to direct while the pipe runs: that counts as direct).
    let final_class = |r: &AttemptReport| {
        r.transfer
            .as_ref()
            .and_then(|t| t.path_class)
            .or(r.path_class)
    };
    // A link moves to a direct path within about 3 s of it opening (PROTOCOL.md §15); a
    // transfer over before that may end on the relay and is recorded with that path.
    let went_direct = |r: &AttemptReport| {
        final_class(r).is_some_and(|c| !c.is_relayed())
            || r.transfer.as_ref().is_some_and(|t| t.ms < 3_000)
    };
    let linked = reports.iter().all(|r| {
        r.as_ref()
            .is_some_and(|r| r.is_linked() && (!must_be_direct || went_direct(r)))
    });
    let path_class = reports[1]
        .as_ref()
        .and_then(final_class)
        .map(|c| c.to_string());
    let (bob_exit, alice_exit) = (bob.exit, alice.exit);
    let exited_ok = |e: Option<Exit>| e.is_some_and(|e| e.code == Some(0));
    let clean = linked && exited_ok(bob_exit) && exited_ok(alice_exit);
    let after_last = |e: Option<Exit>| {
        last.zip(e)
            .map(|((at, ..), e)| e.at.saturating_duration_since(at).as_secs_f64())
    };
    let mut sample = Sample {
        send_exit_s: after_last(bob_exit),
        recv_exit_s: after_last(alice_exit),
        send_cpu_s: bob_exit.map(|e| e.cpu_s),
        recv_cpu_s: alice_exit.map(|e| e.cpu_s),
        clean_exit: Some(clean),
        path_class,
        server_cpu_s: server_before.zip(server_after).map(|(a, b)| b - a),
        udp_buffer_drops: drops_before
            .zip(buffer_errors(pair))
            .map(|(a, b)| b.saturating_sub(a)),
        ..Sample::default()
    };
    if let (Some((t0, b0, a0)), Some((t1, b1, a1))) = (first, last) {
        let secs = t1.duration_since(t0).as_secs_f64().max(1e-6);
        sample.secs = Some(secs);
        sample.mib_s = Some(bytes as f64 / MIB as f64 / secs);
        sample.send_cpu_transfer_s = b0.zip(b1).map(|(a, b)| b - a);
        sample.recv_cpu_transfer_s = a0.zip(a1).map(|(a, b)| b - a);
    }
    if !clean || last.is_none() {
        let tail = |p: &Path| {
            let text = read_text(p);
            let lines: Vec<&str> = text.lines().rev().take(2).collect();
            lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
        };
        sample.error = Some(format!(
            "{}linked {linked} (direct required: {must_be_direct}), exit alice {:?} bob {:?}; alice: {}; bob: {}",
            if last.is_none() {
                format!(
                    "delivered {} of {bytes} bytes; ",
                    std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0)
                )
            } else {
                String::new()
            },
            alice_exit.and_then(|e| e.code),
            bob_exit.and_then(|e| e.code),
            tail(&alice_err),
            tail(&bob_err),
        ));
    }
    let slow = |v: Option<f64>| v.is_none_or(|v| v > 1.0);
    if sample.error.is_some() || slow(sample.send_exit_s) || slow(sample.recv_exit_s) {
        // Keep the logs of a run worth looking at (stderr is overwritten by the next one).
        let keep = dir.join(format!("kept-{}", KEPT.fetch_add(1, Ordering::Relaxed)));
        if std::fs::create_dir_all(&keep).is_ok() {
            for f in [&alice_err, &bob_err, &alice_report, &bob_report] {
                if let Some(name) = f.file_name() {
                    let _ = std::fs::copy(f, keep.join(name));
                }
            }
        }
    }
    let _ = std::fs::remove_file(&out);
    Ok(sample)
}

/// Numbers the kept logs of slow or failed runs.
static KEPT: AtomicUsize = AtomicUsize::new(0);

/// iperf3 TCP from Bob to Alice, `bytes` long.
fn tcp_run(pair: &PeerPair, bytes: u64) -> Sample {
    match iperf(pair, bytes) {
        Ok(mib_s) => Sample {
            mib_s: Some(mib_s),
            secs: Some(bytes as f64 / MIB as f64 / mib_s.max(1e-9)),
            ..Sample::default()
        },
        Err(e) => Sample {
            error: Some(e.to_string()),
            ..Sample::default()
        },
    }
}

fn iperf(pair: &PeerPair, bytes: u64) -> Result<f64, BenchError> {
    let mut server = spawn(
        pair.alice
            .host
            .netns()
            .command("iperf3")
            .args(["-s", "-1", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "iperf3 -s (apt-get install iperf3)",
    )?;
    std::thread::sleep(Duration::from_millis(200));
    let out = pair
        .bob
        .host
        .netns()
        .command("iperf3")
        .args(["-c", &pair.alice.host.ip().to_string(), "-p", "5201", "-J"])
        .args(["-n", &bytes.to_string()])
        .output()
        .map_err(|e| BenchError::io("run iperf3 -c", e))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.poll() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| BenchError::Tool {
            tool: "iperf3".into(),
            reason: format!("bad JSON: {e}"),
        })?;
    json.pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .map(|bps| bps / 8.0 / MIB as f64)
        .ok_or_else(|| BenchError::Tool {
            tool: "iperf3".into(),
            reason: format!(
                "no sum_received: {}",
                json.get("error").cloned().unwrap_or_default()
            ),
        })
}

/// The iroh side of one path: a listener at Alice, dialled from Bob.
struct IrohPath {
    listener: Watched,
    id: String,
}

/// iroh's relay on the server's host.
struct IrohRelay {
    binary: PathBuf,
    url: String,
    cert: PathBuf,
    relay: Watched,
}

impl IrohRelay {
    fn start(binary: &Path, host: &Host, dir: &Path) -> Result<IrohRelay, BenchError> {
        let cert = dir.join("relay.pem");
        let log = dir.join("relay.log");
        let mut relay = spawn(
            host.netns()
                .command(binary)
                .args(["relay", "--ip", &host.ip().to_string(), "--cert-out"])
                .arg(&cert)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(create(&log)?),
            "iroh-probe relay",
        )?;
        wait_for_text(&log, "relay up", &mut relay, Duration::from_secs(30))?;
        Ok(IrohRelay {
            binary: binary.to_owned(),
            url: format!("https://{}:{IROH_RELAY_PORT}", host.ip()),
            cert,
            relay,
        })
    }

    fn listen(&self, alice: &Host, dir: &Path) -> Result<IrohPath, BenchError> {
        let id_file = dir.join("iroh.id");
        let log = dir.join("iroh.listen.log");
        let _ = std::fs::remove_file(&id_file);
        let mut listener = spawn(
            alice
                .netns()
                .command(&self.binary)
                .args(["listen", "--relay", &self.url, "--cert"])
                .arg(&self.cert)
                .arg("--id-out")
                .arg(&id_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(create(&log)?),
            "iroh-probe listen",
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let id = loop {
            let id = read_text(&id_file);
            if !id.trim().is_empty() {
                break id.trim().to_owned();
            }
            if listener.poll() || Instant::now() > deadline {
                return Err(BenchError::Tool {
                    tool: "iroh-probe listen".into(),
                    reason: format!("no id: {}", read_text(&log).trim()),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(IrohPath { listener, id })
    }

    fn dial(
        &self,
        path: &mut IrohPath,
        pair: &PeerPair,
        bytes: u64,
        dir: &Path,
        must_be_direct: bool,
    ) -> Sample {
        match self.try_dial(path, pair, bytes, dir, must_be_direct) {
            Ok(s) => s,
            Err(e) => Sample {
                error: Some(e.to_string()),
                ..Sample::default()
            },
        }
    }

    fn try_dial(
        &self,
        path: &mut IrohPath,
        pair: &PeerPair,
        bytes: u64,
        dir: &Path,
        must_be_direct: bool,
    ) -> Result<Sample, BenchError> {
        let bob = &pair.bob.host;
        let relay_before = cpu_secs(self.relay.pid());
        let out = dir.join("iroh.dial.out");
        let err = dir.join("iroh.dial.err");
        let listener_before = cpu_secs(path.listener.pid());
        let drops_before = buffer_errors(pair);
        let mut dial = spawn(
            bob.netns()
                .command(&self.binary)
                .args(["dial", "--relay", &self.url, "--cert"])
                .arg(&self.cert)
                .args(["--id", &path.id, "--bytes", &bytes.to_string()])
                .stdin(Stdio::null())
                .stdout(create(&out)?)
                .stderr(create(&err)?),
            "iroh-probe dial",
        )?;
        let deadline = Instant::now() + Duration::from_secs(60 + bytes / MIB);
        let mut line_at = None;
        while !dial.poll() && Instant::now() < deadline {
            if line_at.is_none() && read_text(&out).contains('\n') {
                line_at = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        dial.kill();
        // The listener's connection task winds down just after the dialer closes.
        std::thread::sleep(Duration::from_millis(100));
        let listener_after = cpu_secs(path.listener.pid());
        let relay_after = cpu_secs(self.relay.pid());
        if path.listener.poll() {
            return Err(BenchError::Tool {
                tool: "iroh-probe listen".into(),
                reason: "exited".into(),
            });
        }
        let text = read_text(&out);
        let json: serde_json::Value =
            serde_json::from_str(text.trim()).map_err(|e| BenchError::Tool {
                tool: "iroh-probe dial".into(),
                reason: format!(
                    "bad output ({e}): {} {}",
                    text.trim(),
                    read_text(&err).trim()
                ),
            })?;
        let received = json.get("received").and_then(serde_json::Value::as_u64);
        let direct = json.get("direct_ms").is_some_and(|d| !d.is_null());
        let mib_s = json.get("mib_s").and_then(serde_json::Value::as_f64);
        let exit = dial.exit;
        let mut sample = Sample {
            mib_s,
            secs: mib_s.map(|m| bytes as f64 / MIB as f64 / m.max(1e-9)),
            send_exit_s: line_at
                .zip(exit)
                .map(|(l, e)| e.at.saturating_duration_since(l).as_secs_f64()),
            send_cpu_s: exit.map(|e| e.cpu_s),
            recv_cpu_s: listener_before.zip(listener_after).map(|(a, b)| b - a),
            path_class: Some(if direct { "direct" } else { "relay" }.to_owned()),
            server_cpu_s: relay_before.zip(relay_after).map(|(a, b)| b - a),
            udp_buffer_drops: drops_before
                .zip(buffer_errors(pair))
                .map(|(a, b)| b.saturating_sub(a)),
            ..Sample::default()
        };
        if received != Some(bytes) || (must_be_direct && !direct) {
            sample.error = Some(format!(
                "received {received:?} of {bytes}, direct {direct}: {}",
                text.trim()
            ));
            sample.mib_s = None;
            sample.secs = None;
        }
        Ok(sample)
    }
}

/// Runs figure 5.
pub fn run(args: &ThroughputArgs) -> Result<ThroughputReport, BenchError> {
    let machine = Machine::detect();
    let bins = binaries(args.bin_dir.as_deref())?;
    let mut notes = vec![format!(
        "chatr: {}; chatr-server: {}",
        bins.chatr.display(),
        bins.server.display()
    )];
    let iroh_bin = if args.no_iroh {
        None
    } else {
        let path = args
            .iroh
            .clone()
            .unwrap_or_else(|| PathBuf::from(IROH_DEFAULT));
        if path.is_file() {
            Some(path)
        } else {
            notes.push(format!(
                "iroh skipped: {} not built (see ../shared/tools/iroh-probe/README.md)",
                path.display()
            ));
            None
        }
    };
    let tcp = !args.no_tcp && which("iperf3");
    if !args.no_tcp && !tcp {
        notes.push("TCP skipped: iperf3 not installed (apt-get install iperf3)".into());
    }
    let temp;
    let work: PathBuf = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| BenchError::io("create --keep dir", e))?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("chatr-bench-tp-")
                .tempdir()
                .map_err(|e| BenchError::io("temp dir", e))?;
            temp.path().to_owned()
        }
    };
    // Input and output in memory: the figure is the link, not the disk.
    let shm = tempfile::Builder::new()
        .prefix("chatr-bench-tp-")
        .tempdir_in(if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        })
        .map_err(|e| BenchError::io("temp dir in /dev/shm", e))?;
    let _guard = crate::lab::exclusive();
    let mut lab = Lab::new().map_err(lab_err)?;
    let srv = lab.add_public_host("srv").map_err(lab_err)?;
    // The relay's byte-rate limits are an operator's policy (100 MiB/s per client by
    // default); iroh's relay has none, so both relays are measured unlimited.
    let server = start_server(
        &bins,
        &srv,
        &work.join("server"),
        &["--relay-client-rate", "0", "--relay-total-rate", "0"],
    )?;
    let relay = match &iroh_bin {
        Some(bin) => {
            let dir = work.join("iroh");
            std::fs::create_dir_all(&dir).map_err(|e| BenchError::io("create iroh dir", e))?;
            Some(IrohRelay::start(bin, &srv, &dir)?)
        }
        None => None,
    };
    let variants: Vec<(Binaries, &Variant)> = args
        .variants
        .iter()
        .map(|v| {
            let chatr = match &v.bin_dir {
                Some(dir) => dir.join("chatr"),
                None => bins.chatr.clone(),
            };
            if !chatr.is_file() {
                return Err(BenchError::Tool {
                    tool: format!("variant {}", v.label),
                    reason: format!("{} not found", chatr.display()),
                });
            }
            notes.push(format!(
                "variant {}: {}{}",
                v.label,
                chatr.display(),
                v.env
                    .iter()
                    .map(|(k, val)| format!(" {k}={val}"))
                    .collect::<String>()
            ));
            Ok((
                Binaries {
                    chatr,
                    server: bins.server.clone(),
                },
                v,
            ))
        })
        .collect::<Result<_, _>>()?;
    let paths = if args.paths.is_empty() {
        LinkPath::ALL.to_vec()
    } else {
        args.paths.clone()
    };
    let mut runs = Vec::new();
    for path in paths {
        let built = path.build(&mut lab)?;
        let bob_router = built.bob_router.clone();
        if args.lose_first_initial && bob_router.is_none() {
            return Err(BenchError::Lab(format!(
                "--lose-first-initial needs Bob behind a NAT; on {} he is public",
                path.label()
            )));
        }
        let dir = work.join(path.short());
        let pair = enrol_pair(&bins, &server, built.alice, built.bob, &dir)?;
        let mut iroh = match &relay {
            Some(relay) => Some(relay.listen(&pair.alice.host, &dir)?),
            None => None,
        };
        for &mib in &args.sizes {
            let bytes = mib * MIB;
            let input = shm.path().join("input");
            write_pattern(&input, bytes)?;
            for k in 0..args.runs_for(mib) {
                let mut run = Run {
                    path,
                    mib,
                    tcp: None,
                    iroh: None,
                    chatr: Sample::default(),
                    variants: vec![Sample::default(); variants.len()],
                };
                let chatr_once = |bins: &Binaries, env: &[(String, String)]| {
                    lose_initial(args, bob_router.as_deref())
                        .and_then(|()| {
                            let wait = Duration::from_secs(args.exit_wait_s);
                            // A variant pinned to the relay (`CHATR_PATH=relay…`) is not
                            // expected to go direct on any path.
                            let pinned = env
                                .iter()
                                .any(|(k, v)| k == "CHATR_PATH" && v.starts_with("relay"));
                            let server = (server.pid(), path.expects_direct() && !pinned);
                            chatr_run(bins, env, &pair, &input, bytes, shm.path(), wait, server)
                        })
                        .unwrap_or_else(|e| Sample {
                            error: Some(e.to_string()),
                            ..Sample::default()
                        })
                };
                // Rotate the order so drift on the shared machine hits every tool alike.
                let tools = 3 + variants.len();
                for slot in 0..tools {
                    match (k + slot) % tools {
                        0 => {
                            if tcp && path.tcp_reachable() {
                                run.tcp = Some(tcp_run(&pair, bytes));
                            }
                        }
                        1 => {
                            if let (Some(relay), Some(iroh)) = (&relay, iroh.as_mut()) {
                                run.iroh = Some(relay.dial(
                                    iroh,
                                    &pair,
                                    bytes,
                                    &dir,
                                    path.expects_direct(),
                                ));
                            }
                        }
                        2 => run.chatr = chatr_once(&bins, &[]),
                        v => {
                            if let (Some((vbins, variant)), Some(sample)) =
                                (variants.get(v - 3), run.variants.get_mut(v - 3))
                            {
                                *sample = chatr_once(vbins, &variant.env);
                            }
                        }
                    }
                }
                let f = |s: &Option<Sample>| {
                    s.as_ref()
                        .and_then(|s| s.mib_s)
                        .map_or("–".into(), |v| format!("{v:.0}"))
                };
                let extra: String = variants
                    .iter()
                    .zip(&run.variants)
                    .map(|((_, v), s)| format!(" {} {}", v.label, f(&Some(s.clone()))))
                    .collect();
                eprintln!(
                    "throughput {} {mib} MiB run {}: TCP {} iroh {} chatr {}{extra} MiB/s, chatr exits {:?}/{:?} s {}",
                    path.label(),
                    k + 1,
                    f(&run.tcp),
                    f(&run.iroh),
                    f(&Some(run.chatr.clone())),
                    run.chatr.send_exit_s,
                    run.chatr.recv_exit_s,
                    run.chatr.error.clone().unwrap_or_default()
                );
                runs.push(run);
            }
        }
        drop(iroh.take());
    }
    drop(relay);
    drop(server);
    drop(lab);
    let mut args = args.clone();
    if args.paths.is_empty() {
        args.paths = LinkPath::ALL.to_vec();
    }
    Ok(ThroughputReport {
        machine,
        args,
        runs,
        notes,
    })
}

/// Arms [`lose_next_initial`] when the arguments ask for it.
fn lose_initial(args: &ThroughputArgs, router: Option<&Netns>) -> Result<(), BenchError> {
    match router {
        Some(router) if args.lose_first_initial => lose_next_initial(router),
        _ => Ok(()),
    }
}

/// Whether `tool` is on the PATH.
fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}
